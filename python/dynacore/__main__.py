"""`python -m dynacore` is the `dynacore` command."""

from dynacore.cli import main

main()
