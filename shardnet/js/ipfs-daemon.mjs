// shardnet's IPFS daemon: js-ipfs serving the Kubo RPC API on loopback, and bitswap over TCP
// on the swarm address (default: a free loopback port) to the peers it is told to connect to.
// Usage: node ipfs-daemon.mjs <repoDir> <apiPort> [swarmMultiaddr] [apiHost]
// The stock `jsipfs daemon` command is broken on current Node; this starts the same Daemon
// class with preload off, no bootstrap / MDNS / delegates (peers come from the chain through
// `swarm/connect`), and non-fatal transport errors.

if (!Promise.withResolvers) {
  // Node 20 lacks it; some libp2p dependencies call it.
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const [repoDir, apiPort, swarm = '/ip4/127.0.0.1/tcp/0', apiHost = '127.0.0.1'] = process.argv.slice(2)
if (!repoDir || !apiPort) {
  console.error('usage: ipfs-daemon.mjs <repoDir> <apiPort> [swarmMultiaddr] [apiHost]')
  process.exit(2)
}

// A daemon killed with SIGKILL leaves its repo lock behind, and js-ipfs refuses the repo until
// the lock is 20 s stale. The pid of the daemon that took it is kept next to it: when that
// process is gone, the lock is dead and is removed, so a crashed daemon restarts at once.
{
  const { existsSync, readFileSync, rmSync, mkdirSync, writeFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const lock = join(repoDir, 'repo.lock')
  const owner = join(repoDir, 'shardnet-daemon.pid')
  if (existsSync(lock) && existsSync(owner)) {
    const pid = parseInt(readFileSync(owner, 'utf8'), 10)
    let alive = false
    try { process.kill(pid, 0); alive = true } catch (err) { alive = err.code === 'EPERM' }
    if (!alive) rmSync(lock, { recursive: true, force: true })
  }
  mkdirSync(repoDir, { recursive: true })
  writeFileSync(owner, String(process.pid))
}

// Bare imports resolve from the repository's node_modules (this file lives inside it).
const { Daemon } = await import('ipfs-daemon')
const { createLibp2p } = await import('libp2p')
const { FaultTolerance } = await import('@libp2p/interface-transport')

const daemon = new Daemon({
  repo: repoDir,
  repoAutoMigrate: true,
  preload: { enabled: false },
  offline: false,
  silent: true,
  start: true,
  config: {
    Addresses: {
      Swarm: [swarm],
      API: `/ip4/${apiHost}/tcp/${apiPort}`,
      Gateway: '',
      RPC: '',
      Delegates: [],
    },
    Bootstrap: [],
    Discovery: { MDNS: { Enabled: false }, webRTCStar: { Enabled: false } },
  },
  libp2p: async ({ libp2pOptions }) => createLibp2p({
    ...libp2pOptions,
    peerDiscovery: [],
    transportManager: { faultTolerance: FaultTolerance.NO_FATAL },
  }),
})

await daemon.start()
const id = await daemon._ipfs.id()
console.log(JSON.stringify({ ready: true, api: `http://${apiHost}:${apiPort}`, peerId: id.id.toString() }))

const stop = async () => {
  try { await daemon.stop() } finally { process.exit(0) }
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
