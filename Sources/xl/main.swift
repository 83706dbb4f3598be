// xl: Procvisor's toolstack command line. Each subcommand lives in its own file.
XL.main()
