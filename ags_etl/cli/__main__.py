from ags_etl.cli import main

main()
