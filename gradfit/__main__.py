from gradfit.cli import main

main()
