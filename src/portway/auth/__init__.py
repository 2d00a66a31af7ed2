"""Authentication and authorization: who is asking, and what may they do on this repository.

passwords   argon2id hashing (PasswordHasher)
privileges  Privilege, Role, Principal; allowed_actions / grant / docker_grant (pure)
scopes      parse_scopes for the token endpoint's `scope` parameters
keys        KeyRing: signing keys in <data_dir>/keys, rotatable
tokens      TokenAuthority: Docker bearer JWTs bound to one repository, refresh tokens
ratelimit   LoginLimiter: failed logins per user and per client address
audit       AuditLog: JSON lines, secrets redacted
store       UserStore: users (users_store), roles (roles_store), refresh tokens
            (refresh_store) in SQL over store_base; first-start admin
service     AuthService: the facade the HTTP layer calls (no HTTP inside), over state:
            basic (Basic, passwords), bearer (tokens verified, remembered, narrowed),
            tokens_issue (the token endpoint's answers); errors, grants (Grant)
"""
