from guardforge.cli import main

main()
