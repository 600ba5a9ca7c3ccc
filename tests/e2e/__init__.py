"""Browser end-to-end tests of the dashboard (issue 5): Playwright driving Debian's chromium."""
