"""`python -m tessq`: the same CLI as the `tessq` console script."""

from tessq.entry import main

main()
