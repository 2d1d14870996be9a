"""The operators' console: server-rendered pages (Jinja2), their catalogues, the live stream."""
