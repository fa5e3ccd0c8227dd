from calmrl.cli import main

main()
