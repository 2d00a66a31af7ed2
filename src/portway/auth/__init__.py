"""Authentication and authorization: who is asking, and what may they do on this repository.

passwords   argon2id hashing (PasswordHasher)
privileges  Privilege, Role, Principal; allowed_actions / grant / docker_grant (pure)
scopes      parse_scopes for the token endpoint's `scope` parameters
keys        KeyRing: signing keys in <data_dir>/keys, rotatable
tokens      TokenAuthority: Docker bearer JWTs bound to one repository, refresh tokens
ratelimit   LoginLimiter: failed logins per user and per client address
audit       AuditLog: JSON lines, secrets redacted
store       UserStore: users, roles, refresh tokens in SQL; first-start admin
service     AuthService: the facade the HTTP layer calls (no HTTP inside)
"""
