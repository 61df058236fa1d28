from econlm.cli import main

main()
