from pyro_mcp.cli import main

main()
