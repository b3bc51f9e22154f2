from bisenet_pl.cli import main

main()
