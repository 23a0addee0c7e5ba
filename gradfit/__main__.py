from gradfit.cli.entry import main

main()
