"""``affluent console``: a small web console for the people who run affluent.

Server-rendered pages, no JavaScript: what ``affluent run``'s components say about their health and
rates, the dead letters by reason with show and re-drive, and a trace search box. The pages are pure
functions of plain data (:mod:`affluent.console.pages`); the I/O is :mod:`affluent.console.data`'s;
:mod:`affluent.console.server` only authenticates, checks forms and routes.
"""
