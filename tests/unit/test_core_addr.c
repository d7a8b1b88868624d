/* tests/unit/test_core_addr.c — every address rule of core/addr.h: syntax, UTF-8, NFC, IDNA2008,
 * lengths, forbidden characters, null addresses, equality and domain containment. Not envelope. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/addr.h"

/* parse parses the NUL-free C string |s| (or |len| octets of it when len != 0). */
static enum cmtp_addr_err parse_n(struct cmtp_addr *a, const char *s, size_t len, unsigned flags)
{
    return cmtp_addr_parse(a, s, len, flags);
}

static enum cmtp_addr_err parse(struct cmtp_addr *a, const char *s, unsigned flags)
{
    return parse_n(a, s, strlen(s), flags);
}

/* expect_err checks that |s| is refused with |want| and that |out| is zeroed afterwards. */
static void expect_err(const char *s, size_t len, unsigned flags, enum cmtp_addr_err want)
{
    struct cmtp_addr a;
    memset(&a, 0xA5, sizeof(a));
    enum cmtp_addr_err got = parse_n(&a, s, len, flags);
    if (got != want)
        print_error("input \"%.*s\": got %s want %s\n", (int)len, s, cmtp_addr_strerror(got),
                    cmtp_addr_strerror(want));
    assert_int_equal(got, want);
    struct cmtp_addr zero;
    memset(&zero, 0, sizeof(zero));
    assert_memory_equal(&a, &zero, sizeof(a));
}

#define EXPECT_ERR(lit, flags, want) expect_err((lit), sizeof(lit) - 1, (flags), (want))

static void expect_ok(const char *s, unsigned flags, const char *local, const char *domain)
{
    struct cmtp_addr a;
    enum cmtp_addr_err got = parse(&a, s, flags);
    if (got != CMTP_ADDR_OK)
        print_error("input \"%s\": %s\n", s, cmtp_addr_strerror(got));
    assert_int_equal(got, CMTP_ADDR_OK);
    assert_false(a.is_null);
    assert_string_equal(a.local, local);
    assert_string_equal(a.domain, domain);
    assert_int_equal(a.local_len, strlen(local));
    assert_int_equal(a.domain_len, strlen(domain));
}

static void test_valid_ascii(void **state)
{
    (void)state;
    expect_ok("<user@example.com>", 0, "user", "example.com");
    expect_ok("<first.last+tag@mail.example.org>", 0, "first.last+tag", "mail.example.org");
    expect_ok("<a@b.co>", 0, "a", "b.co");
    expect_ok("<x_y-z!#%&'*/=?^{|}~@sub-1.example.net>", 0, "x_y-z!#%&'*/=?^{|}~",
              "sub-1.example.net");
    expect_ok("<1@example.com>", 0, "1", "example.com");
    expect_ok("<a@123.example>", 0, "a", "123.example");
}

static void test_domain_lowercased_local_kept(void **state)
{
    (void)state;
    expect_ok("<User.Name@EXAMPLE.Com>", 0, "User.Name", "example.com");
}

static void test_utf8_local_and_idn(void **state)
{
    (void)state;
    expect_ok("<j\xc3\xb6rg@b\xc3\xbc"
              "cher.example>",
              0, "j\xc3\xb6rg", "xn--bcher-kva.example");
    expect_ok("<j\xc3\xb6rg@b\xc3\xbc"
              "cher.example>",
              CMTP_ADDR_STRICT_NFC, "j\xc3\xb6rg", "xn--bcher-kva.example");
    /* Upper-case U-label: IDNA2008 without UTS #46 folds no non-ASCII case: refused. */
    EXPECT_ERR("<a@B\xc3\x9c"
               "CHER.example>",
               0, CMTP_ADDR_ERR_DOMAIN);
    /* A-labels are accepted as they are, in any case. */
    expect_ok("<a@xn--bcher-kva.example>", 0, "a", "xn--bcher-kva.example");
    expect_ok("<a@XN--BCHER-KVA.EXAMPLE>", 0, "a", "xn--bcher-kva.example");
    /* Non-transitional: sharp s stays (xn--fa-hia), it is not mapped to "ss". */
    expect_ok("<a@fa\xc3\x9f.de>", 0, "a", "xn--fa-hia.de");
    /* CJK local part and domain. */
    expect_ok("<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8>", 0,
              "\xe7\x94\xa8\xe6\x88\xb7", "xn--fsqu00a.xn--55qx5d");
}

static void test_nfc(void **state)
{
    (void)state;
    /* o + U+0308 COMBINING DIAERESIS: normalized to U+00F6, or refused under STRICT_NFC. */
    expect_ok("<jo\xcc\x88rg@example.com>", 0, "j\xc3\xb6rg", "example.com");
    EXPECT_ERR("<jo\xcc\x88rg@example.com>", CMTP_ADDR_STRICT_NFC, CMTP_ADDR_ERR_NFC);
    /* U+212B ANGSTROM SIGN is canonically U+00C5. */
    expect_ok("<\xe2\x84\xab@example.com>", 0, "\xc3\x85", "example.com");
    EXPECT_ERR("<\xe2\x84\xab@example.com>", CMTP_ADDR_STRICT_NFC, CMTP_ADDR_ERR_NFC);
    /* U+037E GREEK QUESTION MARK normalizes to ';', which is forbidden: refused, not smuggled. */
    EXPECT_ERR("<a\xcd\xbe"
               "b@example.com>",
               0, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR("<a\xcd\xbe"
               "b@example.com>",
               CMTP_ADDR_STRICT_NFC, CMTP_ADDR_ERR_NFC);
    /* A non-NFC domain is normalized by IDNA2008. */
    expect_ok("<a@bu\xcc\x88"
              "cher.example>",
              0, "a", "xn--bcher-kva.example");
}

static void test_forbidden_chars(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "<a\rb@example.com>",
        "<a\nb@example.com>",
        "<a b@example.com>",
        "<a\tb@example.com>",
        "<a;b@example.com>",
        "<$(id)@example.com>",
        "<\"a\"@example.com>",
        "<a(comment)@example.com>",
        "<a,b@example.com>",
        "<a:b@example.com>",
        "<a<b@example.com>",
        "<a>b@example.com>",
        "<a[b@example.com>",
        "<a]b@example.com>",
        "<a\\b@example.com>",
        "<a\x7f"
        "b@example.com>",
        "<a\x01@example.com>",
        "<a\xc2\x85"
        "b@example.com>", /* U+0085 NEL (C1 control) */
        "<a\xc2\x80"
        "b@example.com>", /* U+0080 (C1 control) */
        "<a\xc2\xa0"
        "b@example.com>", /* U+00A0 NO-BREAK SPACE */
        "<a\xe2\x80\xa8"
        "b@example.com>", /* U+2028 LINE SEPARATOR */
        "<a\xe2\x80\xa9"
        "b@example.com>", /* U+2029 PARAGRAPH SEPARATOR */
        "<a\xe3\x80\x80"
        "b@example.com>", /* U+3000 IDEOGRAPHIC SPACE */
        "<a\xe1\x9a\x80"
        "b@example.com>", /* U+1680 OGHAM SPACE MARK */
        "<a\xe2\x80\x83"
        "b@example.com>",    /* U+2003 EM SPACE */
        "<a@b@example.com>", /* '@' in the local part */
        "<${run{/bin/sh -c id}}@example.com>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], strlen(bad[i]), 0, CMTP_ADDR_ERR_CHAR);
    /* NUL inside the local part. */
    EXPECT_ERR("<a\0b@example.com>", 0, CMTP_ADDR_ERR_CHAR);
    /* CR, LF, NUL, space, ';', '_' or a control inside the domain. */
    EXPECT_ERR("<a@exa\rmple.com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@exa\nmple.com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@example.com\0>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@exa mple.com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@example.com;rm>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@a_b.example>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@\xe3\x80\x80"
               "ab.example>",
               0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@\xc2\x85"
               "ab.example>",
               0, CMTP_ADDR_ERR_DOMAIN);
}

/* RELIABILITY.md case 15: injection attempts are refused or kept as inert octets. */
static void test_reliability_case15(void **state)
{
    (void)state;
    EXPECT_ERR("<a\r\nRCPT TO:<b@x.example>@example.com>", 0, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR("<a@example.com>\r\nDATA", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("<x;/bin/sh@example.com>", 0, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR("<$(touch /tmp/p)@example.com>", 0, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR("<a@$(id).example>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@${run{id}}.example>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@`id`.example>", 0, CMTP_ADDR_ERR_DOMAIN);
    /* '$', '{', '}' and '`' are ordinary local-part characters (as in RFC 5321 atext): such
     * addresses are accepted and stored byte for byte; nothing ever expands them. */
    expect_ok("<${run{/bin/sh}}@example.com>", 0, "${run{/bin/sh}}", "example.com");
    expect_ok("<`id`@example.com>", 0, "`id`", "example.com");
    expect_ok("<${if{x}}$`@example.com>", 0, "${if{x}}$`", "example.com");
    /* Over-long and invalid UTF-8 and non-NFC variants. */
    char big[400];
    memset(big, 'a', sizeof(big));
    expect_err(big, sizeof(big), 0, CMTP_ADDR_ERR_TOO_LONG);
    EXPECT_ERR("<\xc0\x80@example.com>", 0, CMTP_ADDR_ERR_UTF8);
    EXPECT_ERR("<e\xcc\x81@example.com>", CMTP_ADDR_STRICT_NFC, CMTP_ADDR_ERR_NFC);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    EXPECT_ERR("<\xc0\x80@example.com>", 0, CMTP_ADDR_ERR_UTF8);         /* overlong NUL */
    EXPECT_ERR("<\xc1\xbf@example.com>", 0, CMTP_ADDR_ERR_UTF8);         /* overlong */
    EXPECT_ERR("<\xe0\x80\xaf@example.com>", 0, CMTP_ADDR_ERR_UTF8);     /* overlong '/' */
    EXPECT_ERR("<\xf0\x80\x80\xaf@example.com>", 0, CMTP_ADDR_ERR_UTF8); /* overlong '/' */
    EXPECT_ERR("<\xed\xa0\x80@example.com>", 0, CMTP_ADDR_ERR_UTF8);     /* U+D800 surrogate */
    EXPECT_ERR("<\xed\xbf\xbf@example.com>", 0, CMTP_ADDR_ERR_UTF8);     /* U+DFFF surrogate */
    EXPECT_ERR("<\xf4\x90\x80\x80@example.com>", 0, CMTP_ADDR_ERR_UTF8); /* > U+10FFFF */
    EXPECT_ERR("<\xf5\x80\x80\x80@example.com>", 0, CMTP_ADDR_ERR_UTF8);
    EXPECT_ERR("<\xe2\x82@example.com>", 0, CMTP_ADDR_ERR_UTF8);  /* truncated */
    EXPECT_ERR("<a@example.com\xe2\x82>", 0, CMTP_ADDR_ERR_UTF8); /* truncated at end */
    EXPECT_ERR("<\x80@example.com>", 0, CMTP_ADDR_ERR_UTF8);      /* stray continuation */
    EXPECT_ERR("<\xff@example.com>", 0, CMTP_ADDR_ERR_UTF8);
    EXPECT_ERR("<a@b\xfc"
               "cher.example>",
               0, CMTP_ADDR_ERR_UTF8); /* Latin-1, not UTF-8 */
}

static void test_utf8_valid(void **state)
{
    (void)state;
    assert_true(cmtp_utf8_valid("", 0));
    assert_true(cmtp_utf8_valid(NULL, 0));
    assert_true(cmtp_utf8_valid("abc", 3));
    assert_true(cmtp_utf8_valid("\xc2\x80", 2));
    assert_true(cmtp_utf8_valid("\xdf\xbf", 2));
    assert_true(cmtp_utf8_valid("\xe0\xa0\x80", 3));
    assert_true(cmtp_utf8_valid("\xed\x9f\xbf", 3)); /* U+D7FF */
    assert_true(cmtp_utf8_valid("\xee\x80\x80", 3)); /* U+E000 */
    assert_true(cmtp_utf8_valid("\xf0\x90\x80\x80", 4));
    assert_true(cmtp_utf8_valid("\xf4\x8f\xbf\xbf", 4)); /* U+10FFFF */
    assert_true(cmtp_utf8_valid("a\0b", 3));             /* NUL is well-formed UTF-8 */
    assert_false(cmtp_utf8_valid("\xc0\x80", 2));
    assert_false(cmtp_utf8_valid("\xc1\x80", 2));
    assert_false(cmtp_utf8_valid("\xe0\x9f\xbf", 3));
    assert_false(cmtp_utf8_valid("\xed\xa0\x80", 3));
    assert_false(cmtp_utf8_valid("\xf0\x8f\xbf\xbf", 4));
    assert_false(cmtp_utf8_valid("\xf4\x90\x80\x80", 4));
    assert_false(cmtp_utf8_valid("\xf8\x88\x80\x80\x80", 5));
    assert_false(cmtp_utf8_valid("\xc3", 1));
    assert_false(cmtp_utf8_valid("\xe2\x82", 2));
    assert_false(cmtp_utf8_valid("\xf0\x90\x80", 3));
    assert_false(cmtp_utf8_valid("\xc3\x28", 2));
    assert_false(cmtp_utf8_valid("\xbf", 1));
    /* |len| is honoured: the bad octet past it is not looked at. */
    assert_true(cmtp_utf8_valid("ab\xff", 2));
}

static void test_local_length(void **state)
{
    (void)state;
    char buf[1024];
    char local[200];
    memset(local, 'a', 128);
    local[128] = '\0';
    snprintf(buf, sizeof(buf), "<%s@example.com>", local);
    expect_ok(buf, 0, local, "example.com");
    memset(local, 'a', 129);
    local[129] = '\0';
    snprintf(buf, sizeof(buf), "<%s@example.com>", local);
    expect_err(buf, strlen(buf), 0, CMTP_ADDR_ERR_LOCAL_LEN);

    /* 64 x U+00E9 = 128 octets: fine; 65 = 130: too long. */
    char u[300] = "";
    for (int i = 0; i < 64; i++)
        strcat(u, "\xc3\xa9");
    snprintf(buf, sizeof(buf), "<%s@example.com>", u);
    expect_ok(buf, CMTP_ADDR_STRICT_NFC, u, "example.com");
    strcat(u, "\xc3\xa9");
    snprintf(buf, sizeof(buf), "<%s@example.com>", u);
    expect_err(buf, strlen(buf), 0, CMTP_ADDR_ERR_LOCAL_LEN);

    /* 129 octets that are 128 after NFC (63 x U+00E9 + e + U+0301): the normalized length
     * counts; STRICT_NFC refuses it as non-NFC. */
    char want[300] = "";
    u[0] = '\0';
    for (int i = 0; i < 63; i++) {
        strcat(u, "\xc3\xa9");
        strcat(want, "\xc3\xa9");
    }
    strcat(u, "e\xcc\x81");
    strcat(want, "\xc3\xa9");
    assert_int_equal(strlen(u), 129);
    snprintf(buf, sizeof(buf), "<%s@example.com>", u);
    expect_ok(buf, 0, want, "example.com");
    expect_err(buf, strlen(buf), CMTP_ADDR_STRICT_NFC, CMTP_ADDR_ERR_NFC);

    EXPECT_ERR("<@example.com>", 0, CMTP_ADDR_ERR_LOCAL_LEN);
}

/* make_domain builds a domain of labels of |lens| octets each ('a'..), joined by dots, ending in
 * "example"-free letters so that the top label is not numeric. */
static void make_domain(char *out, const size_t *lens, size_t n)
{
    size_t p = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            out[p++] = '.';
        memset(out + p, (int)('a' + i), lens[i]);
        p += lens[i];
    }
    out[p] = '\0';
}

static void test_domain_lengths(void **state)
{
    (void)state;
    char d[300], buf[1024];
    const size_t ok253[] = {63, 63, 63, 61};
    make_domain(d, ok253, 4);
    assert_int_equal(strlen(d), 253);
    snprintf(buf, sizeof(buf), "<a@%s>", d);
    expect_ok(buf, 0, "a", d);

    const size_t bad254[] = {63, 63, 63, 62};
    make_domain(d, bad254, 4);
    assert_int_equal(strlen(d), 254);
    snprintf(buf, sizeof(buf), "<a@%s>", d);
    expect_err(buf, strlen(buf), 0, CMTP_ADDR_ERR_DOMAIN_LEN);

    const size_t l63[] = {63, 3};
    make_domain(d, l63, 2);
    snprintf(buf, sizeof(buf), "<a@%s>", d);
    expect_ok(buf, 0, "a", d);
    const size_t l64[] = {64, 3};
    make_domain(d, l64, 2);
    snprintf(buf, sizeof(buf), "<a@%s>", d);
    expect_err(buf, strlen(buf), 0, CMTP_ADDR_ERR_DOMAIN_LEN);

    /* Single label, empty domain. */
    EXPECT_ERR("<a@localhost>", 0, CMTP_ADDR_ERR_DOMAIN_LEN);
    EXPECT_ERR("<a@com>", 0, CMTP_ADDR_ERR_DOMAIN_LEN);
    EXPECT_ERR("<a@>", 0, CMTP_ADDR_ERR_DOMAIN_LEN);
    /* An A-label that becomes too long: 14 "bücher." labels are 119 octets but 203 as
     * A-labels; fine alone, too long with a 128-octet local part (332 > 320). */
    char dom[300] = "";
    for (int i = 0; i < 14; i++)
        strcat(dom, "b\xc3\xbc"
                    "cher.");
    strcat(dom, "example");
    char local[129];
    memset(local, 'x', 128);
    local[128] = '\0';
    snprintf(buf, sizeof(buf), "<a@%s>", dom);
    assert_int_equal(parse(&(struct cmtp_addr){0}, buf, 0), CMTP_ADDR_OK);
    snprintf(buf, sizeof(buf), "<%s@%s>", local, dom);
    assert_true(strlen(buf) - 2 <= CMTP_ADDR_MAX);
    expect_err(buf, strlen(buf), 0, CMTP_ADDR_ERR_TOO_LONG);
}

static void test_whole_length(void **state)
{
    (void)state;
    /* 320 octets inside the brackets: 128 + '@' + 191. */
    char d[200], buf[1024], local[129];
    const size_t lens[] = {63, 63, 63};
    make_domain(d, lens, 3);
    assert_int_equal(strlen(d), 191);
    memset(local, 'l', 128);
    local[128] = '\0';
    snprintf(buf, sizeof(buf), "<%s@%s>", local, d);
    assert_int_equal(strlen(buf), 322);
    expect_ok(buf, 0, local, d);
    /* 321 inside: refused before anything else is looked at. */
    snprintf(buf, sizeof(buf), "<%s@x%s>", local, d);
    expect_err(buf, strlen(buf), 0, CMTP_ADDR_ERR_TOO_LONG);
    /* BARE: the same limits without brackets. */
    snprintf(buf, sizeof(buf), "%s@%s", local, d);
    expect_ok(buf, CMTP_ADDR_BARE, local, d);
    snprintf(buf, sizeof(buf), "%s@x%s", local, d);
    expect_err(buf, strlen(buf), CMTP_ADDR_BARE, CMTP_ADDR_ERR_TOO_LONG);
    /* Far too long: rejected on the length alone, whatever the octets. */
    char huge[100000];
    memset(huge, '\xff', sizeof(huge));
    expect_err(huge, sizeof(huge), 0, CMTP_ADDR_ERR_TOO_LONG);
}

static void test_ip_literals_and_domain_rules(void **state)
{
    (void)state;
    EXPECT_ERR("<a@[192.0.2.1]>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@[IPv6:2001:db8::1]>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@192.0.2.1>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@example.123>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@example.com.>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@.example.com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@example..com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@.>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@-example.com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@example-.com>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@ab--cd.example>", 0, CMTP_ADDR_ERR_DOMAIN);   /* reserved R-LDH label */
    EXPECT_ERR("<a@xn--zzzz.example>", 0, CMTP_ADDR_ERR_DOMAIN); /* bad punycode */
    EXPECT_ERR("<a@xn--.example>", 0, CMTP_ADDR_ERR_DOMAIN);
    EXPECT_ERR("<a@xn--abc-.example>", 0, CMTP_ADDR_ERR_DOMAIN);       /* encodes plain "abc" */
    EXPECT_ERR("<a@xn--bucher-xyd.example>", 0, CMTP_ADDR_ERR_DOMAIN); /* non-NFC U-label */
    EXPECT_ERR("<a@xn--ber-ska.example>", 0, CMTP_ADDR_ERR_DOMAIN);    /* encodes "Über" */
    EXPECT_ERR("<a@xn--ab-m1t.example>", 0, CMTP_ADDR_ERR_DOMAIN);     /* ZWJ, CONTEXTJ */
    expect_ok("<a@a-b.example>", 0, "a", "a-b.example");
    expect_ok("<a@a.b.c.d.e.example>", 0, "a", "a.b.c.d.e.example");
    expect_ok("<a@1.2.3.example>", 0, "a", "1.2.3.example");
}

static void test_local_dots(void **state)
{
    (void)state;
    EXPECT_ERR("<.a@example.com>", 0, CMTP_ADDR_ERR_DOTS);
    EXPECT_ERR("<a.@example.com>", 0, CMTP_ADDR_ERR_DOTS);
    EXPECT_ERR("<a..b@example.com>", 0, CMTP_ADDR_ERR_DOTS);
    EXPECT_ERR("<.@example.com>", 0, CMTP_ADDR_ERR_DOTS);
    expect_ok("<a.b.c@example.com>", 0, "a.b.c", "example.com");
}

static void test_syntax(void **state)
{
    (void)state;
    EXPECT_ERR("user@example.com", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("<user@example.com", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("user@example.com>", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("<userexample.com>", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("< user@example.com>", 0, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR(" <user@example.com>", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("<", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR(">", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("", 0, CMTP_ADDR_ERR_SYNTAX);
    EXPECT_ERR("<<a@example.com>>", 0, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR("<a@example.com>>", 0, CMTP_ADDR_ERR_DOMAIN);
}

static void test_null_address(void **state)
{
    (void)state;
    struct cmtp_addr a;
    assert_int_equal(parse(&a, "<>", CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_true(a.is_null);
    assert_string_equal(a.local, "");
    assert_string_equal(a.domain, "");
    assert_int_equal(a.local_len, 0);
    assert_int_equal(a.domain_len, 0);
    EXPECT_ERR("<>", 0, CMTP_ADDR_ERR_NULL);
    EXPECT_ERR("<>", CMTP_ADDR_STRICT_NFC, CMTP_ADDR_ERR_NULL);
    assert_int_equal(parse(&a, "", CMTP_ADDR_ALLOW_NULL | CMTP_ADDR_BARE), CMTP_ADDR_OK);
    assert_true(a.is_null);
    EXPECT_ERR("", CMTP_ADDR_BARE, CMTP_ADDR_ERR_NULL);
    EXPECT_ERR("< >", CMTP_ADDR_ALLOW_NULL, CMTP_ADDR_ERR_SYNTAX);
    /* A null address formats as the empty string. */
    char out[8];
    assert_int_equal(parse(&a, "<>", CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(cmtp_addr_format(&a, out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

static void test_bare(void **state)
{
    (void)state;
    expect_ok("user@example.com", CMTP_ADDR_BARE, "user", "example.com");
    expect_ok("j\xc3\xb6rg@B\xc3\xbc"
              "cher.example",
              CMTP_ADDR_BARE, "j\xc3\xb6rg", "xn--bcher-kva.example");
    EXPECT_ERR("<user@example.com>", CMTP_ADDR_BARE, CMTP_ADDR_ERR_CHAR);
    EXPECT_ERR("userexample.com", CMTP_ADDR_BARE, CMTP_ADDR_ERR_SYNTAX);
}

static void test_format(void **state)
{
    (void)state;
    struct cmtp_addr a;
    char out[400];
    assert_int_equal(parse(&a,
                           "<j\xc3\xb6rg@B\xc3\xbc"
                           "cher.example>",
                           0),
                     CMTP_ADDR_OK);
    int n = cmtp_addr_format(&a, out, sizeof(out));
    assert_int_equal(n, strlen("j\xc3\xb6rg@xn--bcher-kva.example"));
    assert_string_equal(out, "j\xc3\xb6rg@xn--bcher-kva.example");
    /* Exact fit, one short. */
    assert_int_equal(cmtp_addr_format(&a, out, (size_t)n + 1), n);
    assert_int_equal(cmtp_addr_format(&a, out, (size_t)n), -ENOSPC);
    assert_int_equal(cmtp_addr_format(&a, out, 0), -ENOSPC);
    /* The formatted form parses back (BARE) to an equal address. */
    struct cmtp_addr b;
    assert_int_equal(cmtp_addr_format(&a, out, sizeof(out)), n);
    assert_int_equal(parse(&b, out, CMTP_ADDR_BARE | CMTP_ADDR_STRICT_NFC), CMTP_ADDR_OK);
    assert_true(cmtp_addr_equal(&a, &b));
}

static void test_equal(void **state)
{
    (void)state;
    struct cmtp_addr a, b, n1, n2;
    assert_int_equal(parse(&a,
                           "<jo\xcc\x88rg@b\xc3\xbc"
                           "cher.example>",
                           0),
                     CMTP_ADDR_OK);
    assert_int_equal(parse(&b, "<j\xc3\xb6rg@xn--bcher-kva.example>", 0), CMTP_ADDR_OK);
    assert_true(cmtp_addr_equal(&a, &b));
    /* Local parts are compared octet for octet: case matters. */
    assert_int_equal(parse(&b, "<J\xc3\xb6rg@xn--bcher-kva.example>", 0), CMTP_ADDR_OK);
    assert_false(cmtp_addr_equal(&a, &b));
    assert_int_equal(parse(&b, "<j\xc3\xb6rg@bucher.example>", 0), CMTP_ADDR_OK);
    assert_false(cmtp_addr_equal(&a, &b));
    assert_int_equal(parse(&n1, "<>", CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(parse(&n2, "<>", CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_true(cmtp_addr_equal(&n1, &n2));
    assert_false(cmtp_addr_equal(&n1, &a));
    assert_false(cmtp_addr_equal(&a, &n1));
    /* Prefix of the other's local part is not equal. */
    struct cmtp_addr c, d;
    assert_int_equal(parse(&c, "<ab@example.com>", 0), CMTP_ADDR_OK);
    assert_int_equal(parse(&d, "<a@example.com>", 0), CMTP_ADDR_OK);
    assert_false(cmtp_addr_equal(&c, &d));
}

static void test_domain_within(void **state)
{
    (void)state;
    assert_true(cmtp_domain_within("b.test", "b.test"));
    assert_true(cmtp_domain_within("a.b.test", "b.test"));
    assert_true(cmtp_domain_within("x.y.a.b.test", "b.test"));
    assert_false(cmtp_domain_within("ab.test", "b.test"));
    assert_false(cmtp_domain_within("test", "b.test"));
    assert_false(cmtp_domain_within("b.test", "a.b.test"));
    assert_false(cmtp_domain_within(".b.test", "b.test"));
    assert_false(cmtp_domain_within("a.b.test", ".b.test"));
    assert_false(cmtp_domain_within("a.b.test", "b.test."));
    assert_false(cmtp_domain_within("a.b.test", ""));
    assert_false(cmtp_domain_within("", ""));
    assert_false(cmtp_domain_within(NULL, "b.test"));
    assert_false(cmtp_domain_within("b.test", NULL));
    assert_false(cmtp_domain_within("b.test.evil", "b.test"));
    assert_false(cmtp_domain_within("a.c.test", "b.test"));
}

static void test_domain_normalize(void **state)
{
    (void)state;
    char out[CMTP_DOMAIN_MAX + 1];
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out), "Example.COM", 11), CMTP_ADDR_OK);
    assert_string_equal(out, "example.com");
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out),
                                                "b\xc3\xbc"
                                                "cher.example",
                                                15),
                     CMTP_ADDR_OK);
    assert_string_equal(out, "xn--bcher-kva.example");
    /* The ideographic full stop would be a label separator under UTS #46 mapping; pure
     * IDNA2008 (docs/PROTOCOL.md 12.3) maps nothing, so it is refused. */
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out),
                                                "b\xc3\xbc"
                                                "cher\xe3\x80\x82"
                                                "example",
                                                17),
                     CMTP_ADDR_ERR_DOMAIN);
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out), "", 0), CMTP_ADDR_ERR_DOMAIN_LEN);
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out), "a..b", 4), CMTP_ADDR_ERR_DOMAIN);
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out), "\xff.com", 5),
                     CMTP_ADDR_ERR_DOMAIN);
    /* Too small an output buffer for the result. */
    char small[5];
    assert_int_equal(cmtp_addr_domain_normalize(small, sizeof(small), "example.com", 11),
                     CMTP_ADDR_ERR_DOMAIN_LEN);
    assert_string_equal(small, "");
    char huge[2000];
    memset(huge, 'a', sizeof(huge));
    assert_int_equal(cmtp_addr_domain_normalize(out, sizeof(out), huge, sizeof(huge)),
                     CMTP_ADDR_ERR_DOMAIN_LEN);
}

static void test_strerror(void **state)
{
    (void)state;
    const char *seen[16];
    size_t n = 0;
    for (int e = CMTP_ADDR_OK; e <= CMTP_ADDR_ERR_NULL; e++) {
        const char *s = cmtp_addr_strerror((enum cmtp_addr_err)e);
        assert_non_null(s);
        assert_string_not_equal(s, "unknown");
        for (size_t i = 0; i < n; i++)
            assert_string_not_equal(seen[i], s);
        seen[n++] = s;
    }
    assert_string_equal(cmtp_addr_strerror(CMTP_ADDR_ERR_UTF8), "bad-utf8");
    assert_string_equal(cmtp_addr_strerror((enum cmtp_addr_err)99), "unknown");
}

/* Every accepted address re-parses, from its formatted form, to an equal address. */
static void test_roundtrip_corpus(void **state)
{
    (void)state;
    static const char *const in[] = {
        "<user@example.com>",
        "<jo\xcc\x88rg@b\xc3\xbc"
        "cher.example>",
        "<\xe2\x84\xab@fa\xc3\x9f.de>",
        "<${run{x}}@XN--BCHER-KVA.example>",
        "<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8>",
        "<a.b@a-b.c-d.example>",
    };
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        struct cmtp_addr a, b;
        char out[CMTP_ADDR_MAX + 1];
        assert_int_equal(parse(&a, in[i], 0), CMTP_ADDR_OK);
        int n = cmtp_addr_format(&a, out, sizeof(out));
        assert_true(n > 0);
        assert_true(cmtp_utf8_valid(out, (size_t)n));
        assert_int_equal(parse(&b, out, CMTP_ADDR_BARE | CMTP_ADDR_STRICT_NFC), CMTP_ADDR_OK);
        assert_true(cmtp_addr_equal(&a, &b));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_ascii),
        cmocka_unit_test(test_domain_lowercased_local_kept),
        cmocka_unit_test(test_utf8_local_and_idn),
        cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_forbidden_chars),
        cmocka_unit_test(test_reliability_case15),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_local_length),
        cmocka_unit_test(test_domain_lengths),
        cmocka_unit_test(test_whole_length),
        cmocka_unit_test(test_ip_literals_and_domain_rules),
        cmocka_unit_test(test_local_dots),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_null_address),
        cmocka_unit_test(test_bare),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_domain_within),
        cmocka_unit_test(test_domain_normalize),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_roundtrip_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
