"""`python -m tessq`: the same CLI as the `tessq` console script."""

from tessq.cli import main

main()
