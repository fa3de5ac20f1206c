"""Study code of docs/results.md: the figures of one study, each made by one command
(``python -m experiments.<module> ...``, run from the repository root). It uses the library
(``intrakd``); the library never imports it, and it is not installed with the package."""
