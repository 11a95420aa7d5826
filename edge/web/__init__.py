"""The admin page: people, enrolment, decisions, the door, the audit log, in a browser.

A Starlette app (app.py) with server-rendered Jinja2 pages and no JavaScript, served by uvicorn (server.py):
`facegate web` on its own, or inside `facegate run` when `[web] enabled`. Accounts and sessions: accounts.py;
what the pages work with (store, models, decision log, the daemon): services.py; uploads: uploads.py; bulk
enrolment in the background: jobs.py. Needs the [web] extra; the device core never imports this package
unless the page is enabled.
"""
