// Hardhat users: `npx hardhat compile` builds the same contracts offline with the npm solc
// (no compiler download), and `npx hardhat node` can serve as the chain instead of Anvil
// (same default mnemonic and chain id; point `shardnet devnet` tools at it with --rpc-url).
const path = require("path");
const { subtask } = require("hardhat/config");
const { TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD } = require("hardhat/builtin-tasks/task-names");

const SOLC_VERSION = require("solc/package.json").version;

subtask(TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD, async (args, hre, runSuper) => {
  if (args.solcVersion !== SOLC_VERSION) return runSuper();
  const solc = require("solc");
  return {
    compilerPath: path.join(path.dirname(require.resolve("solc")), "soljson.js"),
    isSolcJs: true,
    version: SOLC_VERSION,
    longVersion: solc.version(),
  };
});

module.exports = {
  solidity: {
    version: SOLC_VERSION,
    // keep in step with shardnet/compiler.py SETTINGS
    settings: { optimizer: { enabled: true, runs: 200 }, evmVersion: "cancun" },
  },
  paths: {
    sources: "./contracts",
    artifacts: "./build/hardhat/artifacts",
    cache: "./build/hardhat/cache",
  },
  networks: {
    hardhat: { chainId: 31337, hardfork: "cancun" },
  },
};
