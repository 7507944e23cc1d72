#!/usr/bin/env node
// solc-js behind the native solc command line that py-solc-x drives:
//   solc-shim --version          -> "Version: 0.8.x+commit..."
//   solc-shim --standard-json    -> standard JSON in on stdin, standard JSON out on stdout
// Plain `solcjs --standard-json` prints a line before the JSON; this prints only the JSON.
import solc from 'solc'

const args = process.argv.slice(2)
if (args.includes('--version')) {
  console.log('solc, the solidity compiler commandline interface')
  console.log(`Version: ${solc.version()}`)
  process.exit(0)
}
if (!args.includes('--standard-json')) {
  console.error('solc-shim supports only --version and --standard-json')
  process.exit(2)
}
const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
process.stdout.write(solc.compile(Buffer.concat(chunks).toString('utf8')))
