/* mtls-agentctl's output: JSON strings, text safe for a terminal, times, PEM. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "client/ctl.h"
#include "common/log.h"
#include "common/scheme.h"

/* A JSON string; bytes that are not valid UTF-8 become U+FFFD so the output always parses. */
void json_str(const char *s)
{
	const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
	const unsigned char *end = p + strlen((const char *)p);
	size_t n;

	putchar('"');
	while (*p != '\0') {
		if (*p == '"' || *p == '\\') {
			printf("\\%c", *p++);
		} else if (*p == '\n') {
			fputs("\\n", stdout);
			p++;
		} else if ((n = log_control_len((const char *)p)) > 0) {
			/* C0, DEL, and C1 (U+0080..U+009F, its second byte) as \u escapes. */
			printf("\\u%04x", n == 1 ? p[0] : p[1]);
			p += n;
		} else if (*p < 0x80) {
			putchar(*p++);
		} else if ((n = log_utf8_printable(p, (size_t)(end - p))) > 0) {
			fwrite(p, 1, n, stdout);
			p += n;
		} else {
			fputs("\\ufffd", stdout);
			p++;
		}
	}
	putchar('"');
}

void json_str_or_null(const char *s)
{
	if (s != NULL)
		json_str(s);
	else
		fputs("null", stdout);
}

/*
 * Text from the agent or from certificates, shown to a human: C0/C1 controls
 * and DEL become '?' so a name cannot drive the terminal.
 */
void put_text(const char *s)
{
	size_t n;

	for (; *s != '\0'; s += n) {
		if ((n = log_control_len(s)) > 0) {
			putchar('?');
		} else {
			putchar(*s);
			n = 1;
		}
	}
}

void fmt_epoch(uint64_t t, char *out, size_t len)
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (t > (uint64_t)INT64_MAX / 2 || (uint64_t)tt != t || gmtime_r(&tt, &tm) == NULL ||
	    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, len, "@%llu", (unsigned long long)t);
}

void fmt_asn1_time(const ASN1_TIME *t, char *out, size_t len)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1 ||
	    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, len, "(unreadable time)");
}

void scheme_str(uint16_t code, char *out, size_t len)
{
	const struct scheme *s = scheme_by_code(code);

	if (s != NULL)
		snprintf(out, len, "%s", s->name);
	else
		snprintf(out, len, "0x%04x", code);
}

/* Writes DER as PEM with the given label to stdout or a file. Returns 0 or -1 (errno). */
int write_pem(const char *path, const char *label, const uint8_t *der, size_t len)
{
	FILE *f = stdout;
	int ok;

	errno = 0;
	if (path != NULL && strcmp(path, "-") != 0 && (f = fopen(path, "w")) == NULL)
		return -1;
	ok = PEM_write(f, label, "", der, (long)len) > 0;
	if (f != stdout) {
		if (fclose(f) != 0)
			ok = 0;
	} else if (fflush(f) != 0) {
		ok = 0;
	}
	if (!ok && errno == 0)
		errno = EIO;
	return ok ? 0 : -1;
}

/* DER as a PEM string (caller frees), or NULL. */
char *pem_string(const char *label, const uint8_t *der, size_t len)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s = NULL, *p;
	long n;

	if (bio == NULL)
		return NULL;
	if (PEM_write_bio(bio, label, "", der, (long)len) > 0 &&
	    (n = BIO_get_mem_data(bio, &p)) > 0 && (s = malloc((size_t)n + 1)) != NULL) {
		memcpy(s, p, (size_t)n);
		s[n] = '\0';
	}
	BIO_free(bio);
	return s;
}
