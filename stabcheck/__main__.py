from stabcheck.cli import run

run()
