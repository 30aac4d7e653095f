from keycard.cli import main

main()
