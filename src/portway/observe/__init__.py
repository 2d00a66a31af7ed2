"""Operations: metrics, health checks and the access log (README "Operations").

Nothing here imports aiohttp: `portway.http.observe` wires these into the application.
"""
