/*
 * The agent's configuration file (INI with git-style subsections), parsed
 * with libinih. Every problem is reported as "FILE:LINE: message".
 */
#ifndef MTLS_AGENT_CONF_H
#define MTLS_AGENT_CONF_H

#include <stddef.h>
#include <sys/types.h>

enum sign_policy {
	POLICY_TLS_CLIENT = 0,	 /* TLS 1.3 client CertificateVerify or TLS 1.2 client transcript */
	POLICY_TLS13_CLIENT = 1, /* TLS 1.3 client CertificateVerify only */
	POLICY_ANY = 2,		 /* anything, including pre-hashed digests */
	/*
	 * tls-client, plus a pre-hashed digest of exactly the scheme's hash length
	 * (PKCS#11 CKM_ECDSA / CKM_RSA_PKCS / CKM_RSA_PKCS_PSS users: GnuTLS, NSS,
	 * Java). The agent cannot see what such a digest is the hash of.
	 */
	POLICY_DIGEST = 3,
};

struct cfg_keystore {
	char *name;
	char *type;	   /* "pkcs11" or "tpm2" */
	char *module;	   /* pkcs11: absolute path; default: p11-kit-proxy */
	char *token;	   /* pkcs11: URI or label (required) */
	char *pin_file;	   /* may be NULL */
	unsigned sessions; /* pkcs11 session pool size, default 4, 1..64 */
	char *tcti;	   /* tpm2: default "device:/dev/tpmrm0" */
	char *srk;	   /* tpm2: "handle:0x81xxxxxx", NULL: SRK from the TCG template */
	int line;	   /* line of the section header */
};

enum renew_method { RENEW_NONE = 0, RENEW_CMP, RENEW_EST };

enum bootstrap_kind {
	BOOTSTRAP_NONE = 0,
	BOOTSTRAP_SECRET,   /* CMP: shared secret (PBM) "secret:REFERENCE:/path/to/secret" */
	BOOTSTRAP_BASIC,    /* EST: HTTP basic "basic:/path/to/file" holding USER:PASSWORD */
	BOOTSTRAP_IDENTITY, /* a manufacturer identity of this agent: "identity:NAME" */
};

struct cfg_identity {
	char *name;
	char *keystore; /* name of a [keystore] section (required, must exist) */
	char *key;	/* key reference (required) */
	char *cert;	/* default: <state-dir>/<name>.crt */
	uid_t *allow_users;
	size_t n_allow_users;
	gid_t *allow_groups;
	size_t n_allow_groups;
	int sign_policy;  /* enum sign_policy, default POLICY_TLS_CLIENT */
	char **allow_exe; /* if set, the caller's program must be one of these (canonical paths) */
	size_t n_allow_exe;
	char **allow_unit; /* if set, the caller must run in one of these systemd units */
	size_t n_allow_unit;
	int line;

	/* Renewal (renew/renew.c). */
	int renew;		  /* enum renew_method, default RENEW_NONE */
	char *ca_url;		  /* required with renew */
	char *ca_trust;		  /* PEM trust anchors, required with renew */
	unsigned renew_permille;  /* renew-at as a fraction (default 660), or ... */
	long long renew_before;	  /* ... seconds before not-after */
	int rotate_key;		  /* default 1 */
	int bootstrap;		  /* enum bootstrap_kind */
	char *bootstrap_ref;	  /* BOOTSTRAP_SECRET: reference value */
	char *bootstrap_file;	  /* BOOTSTRAP_SECRET/BASIC: the secret's file */
	char *bootstrap_identity; /* BOOTSTRAP_IDENTITY */
	/*
	 * renew-auth = identity:NAME: the identity whose key and certificate authenticate
	 * renewals (EST TLS client, CMP protection) instead of the key being renewed, so that an
	 * application allowed to sign with that key cannot re-enroll it. NULL: the current key.
	 */
	char *renew_auth;
	/* renew-verify: a server the new credential must be accepted by before it is installed
	 * (https://HOST[:PORT]/PATH or mqtts://HOST:PORT; renew/renew-verify.h). NULL: none. */
	char *renew_verify;
	/* Revocation checks of the identity's own certificate (renew/revocation.h). */
	int revocation_check;	       /* enum rev_mode, default REV_AUTO */
	long long revocation_interval; /* seconds between checks, default 1 h */
	char *post_renew;	       /* shell command run after a renewal */
	char **cert_out;	       /* extra paths the chain is written to */
	size_t n_cert_out;
	char *subject;	      /* "/CN=.../O=..." for enrollment without a certificate */
	int key_type;	      /* enum ks_keygen_type for new keys; 0: like the current key */
	unsigned ca_timeout;  /* seconds for one transaction, default 60 */
	char *ca_signer;      /* CMP: PEM certificates pinned as response signers */
	char *ca_sender;      /* CMP: the sender name every response must carry */
	int implicit_confirm; /* CMP: ask for implicit confirmation (default 0) */
};

struct config {
	char *path;
	/* [agent] */
	char *socket;	    /* default MTLS_AGENT_DEFAULT_SOCKET */
	mode_t socket_mode; /* default 0660 */
	int has_socket_group;
	gid_t socket_group;
	char *state_dir;    /* default MTLS_AGENT_DEFAULT_STATE_DIR */
	uid_t *admin_users; /* default: root (0) */
	size_t n_admin_users;
	gid_t *admin_groups;
	size_t n_admin_groups;
	unsigned workers;	      /* signing threads, default 4, 1..64 */
	unsigned max_clients;	      /* default 1024 */
	unsigned max_clients_per_uid; /* default 128 */
	unsigned admin_reserve; /* of max_clients, only for admins; default 16, < max_clients */
	unsigned idle_timeout;	/* seconds without progress before a close; 0 never; default 300 */
	char *metrics_listen;	/* NULL: off; a socket path or loopback HOST:PORT */
	int metrics_identities; /* TCP scrapers see per-identity series; default 0 */

	struct cfg_keystore *keystores;
	size_t n_keystores;
	struct cfg_identity *identities;
	size_t n_identities;

	/* "FILE:LINE: message" for problems that did not stop the load (accounts that no
	 * longer exist, left out of their allow-list); logged as errors by config_load. */
	char **problems;
	size_t n_problems;
	/* "FILE:LINE: message" for what the agent logs as warnings at load. */
	char **warnings;
	size_t n_warnings;
};

/*
 * Parses and validates path. On failure returns -1 and writes one line to
 * err ("FILE:LINE: message", or "FILE: message" for whole-file problems).
 */
int config_load(const char *path, struct config **out, char *err, size_t errlen);
/*
 * config_load() on the agent's behalf, for mtls-agentctl check: the same reader and
 * verdict, except that the file may be owned by root or agent_uid (the agent's, not this
 * process's uid), nothing is logged (cfg->problems and cfg->warnings hold what the agent
 * would log), and what depends on the reading process's own rights is not judged.
 */
int config_check(const char *path, uid_t agent_uid, struct config **out, char *err, size_t errlen);
void config_free(struct config *cfg);

const struct cfg_keystore *config_keystore(const struct config *cfg, const char *name);
const struct cfg_identity *config_identity(const struct config *cfg, const char *name);

/* Estimated strength in bits of a secret (see config.c); for the bootstrap warnings. */
double config_secret_bits(const char *s, size_t len);

/*
 * Whether an agent with effective uid euid and /proc/self/status text
 * status_text may read /proc/PID/exe of other users' processes (root, or
 * CAP_SYS_PTRACE in CapEff), as allow-exe and allow-unit need.
 */
int config_can_inspect_others(uid_t euid, const char *status_text);

const char *sign_policy_name(int policy);
const char *renew_method_name(int method);
/* -1 if unknown. */
int sign_policy_from_name(const char *name);

#endif
