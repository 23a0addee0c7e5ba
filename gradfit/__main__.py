from gradfit.entry import main

main()
