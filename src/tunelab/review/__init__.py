"""The eye check before training: `tunelab data review FILE.jsonl`.

    store.py    decisions and edits in FILE.review.sqlite, with a version per item (409 on stale saves)
    server.py   a token-protected web server on 127.0.0.1 and the export command
    page.html   the page: one item or a list, accept / reject / edit with the keyboard
"""
