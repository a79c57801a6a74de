"""What the tests, the benchmarks and the demo share to run the product end to end; nothing in
training, export, serving or the nightly job imports it.

- `recsys_mtl.devtools.server_process`: `recsys-mtl serve` as a child process on a free loopback
  port (`ServerProcess`, `running_server`, `serve`, `free_port`);
- `recsys_mtl.devtools.fixtures`: hand-made raw rows that match a recipe (`make_raw_table`), a small
  model trained for a few steps and published into a registry (`small_recipe`, `publish`), a
  serving config for it (`write_config`) and Arrow IPC request bodies (`ipc_stream`).

The `recsys-mtl train` command line is built by `recsys_mtl.cli.train.train_command` (the nightly
job uses it too). Submodules are imported by name: this package imports nothing heavy itself.
"""
