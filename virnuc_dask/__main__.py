from virnuc_dask.cli.main import console_main

console_main()
