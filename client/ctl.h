/*
 * mtls-agentctl's shared parts: the command context, the one-line messages, the
 * option helpers every command uses, and text/JSON output. One file per group of
 * commands (ctl-keys.c, ctl-status.c, ctl-check*.c), as systemctl keeps one per verb.
 */
#ifndef MTLS_CTL_H
#define MTLS_CTL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "mtls-agent/client.h"

#define PROG "mtls-agentctl"

#ifndef MTLS_AGENT_DEFAULT_SOCKET
#define MTLS_AGENT_DEFAULT_SOCKET "/run/mtls-agent/agent.sock"
#endif
#ifndef MTLS_AGENT_DEFAULT_CONFIG
#define MTLS_AGENT_DEFAULT_CONFIG "/etc/mtls-agent/agent.conf"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* Not an exit status: ctl_simple_options() found nothing that ends the command. */
#define CTL_CONTINUE (-1)

struct ctx {
	const char *socket; /* NULL: the library's default */
	int json;
	const char *cmd;
	mtls_agent *agent;
};

/* ---- ctl-main.c: messages and options ---- */

/* One line on stderr: "mtls-agentctl: CMD: message". */
void errmsg(const struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same, pointing at --help; returns EXIT_USAGE. */
int usage_error(const struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reports a library failure: the code's meaning, then the agent's own words. EXIT_FAIL. */
int agent_error(const struct ctx *c, int r);
/* Connects c->agent; 0, or EXIT_FAIL after the message. */
int connect_agent(struct ctx *c);
/* getopt_long's complaint, in our one-line form; EXIT_USAGE. */
int bad_option(const struct ctx *c, int ch, char **argv);
/* The --help of the current command; EXIT_OK. */
int command_help(const struct ctx *c);
/* The one operand of most commands: an identity NAME and nothing after it (NULL after the
 * usage message otherwise). */
const char *identity_arg(const struct ctx *c, int argc, char **argv);
/*
 * The options of a command that takes only --help (and --json when json is set).
 * CTL_CONTINUE to go on, else the exit status (help printed, or a usage error).
 */
int ctl_simple_options(struct ctx *c, int argc, char **argv, int json);
/* The same for a command with one option that takes a value, -LETTER/--NAME VALUE, besides
 * --help: *value gets it (the last one given). */
int ctl_value_option(struct ctx *c, int argc, char **argv, const char *name, int letter,
		     const char **value);
/* ctl_simple_options(), then no operand allowed. */
int ctl_no_operands(struct ctx *c, int argc, char **argv, int json);

/* ---- ctl-output.c: text and JSON ---- */

/* A JSON string; bytes that are not valid UTF-8 become U+FFFD so the output always parses. */
void json_str(const char *s);
/* json_str(), or null for NULL. */
void json_str_or_null(const char *s);
/* Text from the agent or from certificates, shown to a human: controls become '?'. */
void put_text(const char *s);
void fmt_epoch(uint64_t t, char *out, size_t len);
void fmt_asn1_time(const ASN1_TIME *t, char *out, size_t len);
/* A TLS SignatureScheme by name, else 0xNNNN. */
void scheme_str(uint16_t code, char *out, size_t len);
/* DER as PEM to stdout (path NULL or "-") or a file. 0, or -1 with errno. */
int write_pem(const char *path, const char *label, const uint8_t *der, size_t len);
/* DER as a PEM string (caller frees), or NULL. */
char *pem_string(const char *label, const uint8_t *der, size_t len);

/* ---- ctl-keys.c: decoding what the agent sends ---- */

/* A DER SubjectPublicKeyInfo / certificate, refusing trailing bytes; NULL if not one. */
EVP_PKEY *spki_decode(const uint8_t *der, size_t len);
X509 *cert_decode(const uint8_t *der, size_t len);

/* ---- the commands ---- */

int cmd_list(struct ctx *c, int argc, char **argv);
int cmd_cert(struct ctx *c, int argc, char **argv);
int cmd_keyref(struct ctx *c, int argc, char **argv);
int cmd_sign(struct ctx *c, int argc, char **argv);
int cmd_keygen(struct ctx *c, int argc, char **argv);
int cmd_csr(struct ctx *c, int argc, char **argv);
int cmd_import_cert(struct ctx *c, int argc, char **argv);
int cmd_status(struct ctx *c, int argc, char **argv);
int cmd_metrics(struct ctx *c, int argc, char **argv);
int cmd_renew(struct ctx *c, int argc, char **argv);
int cmd_reload(struct ctx *c, int argc, char **argv);
int cmd_check(struct ctx *c, int argc, char **argv);

#endif
