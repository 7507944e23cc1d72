from shardnet.cli import run

run()
