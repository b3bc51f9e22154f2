from bisenet_pl.cli.main import command

command()
