# Makefile — the one non-recursive build of the CMTP appliance.
# `make` builds build/{cmtpd,cmtpctl,cmtp-send,cmtp-bench}; `make SAN=asan` the ASan+UBSan build
# under build/asan/; `make test` builds both and runs every test; `make run` starts the appliance.

SAN ?=
CC ?= cc
FUZZ_CC ?= clang

ifeq ($(SAN),asan)
BUILD ?= build/asan
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
OPT := -O1 -g
ALLOC_LIBS :=
else ifeq ($(SAN),tsan)
BUILD ?= build/tsan
SANFLAGS := -fsanitize=thread
OPT := -O1 -g
ALLOC_LIBS :=
else ifeq ($(SAN),)
BUILD ?= build
SANFLAGS :=
OPT := -O2 -g
# jemalloc only in the release build: it would hide allocations from the sanitizers.
ALLOC_LIBS := -ljemalloc
else
$(error SAN must be empty, asan or tsan)
endif

BSSL_INC := /usr/include/android
BSSL_LIB := /usr/lib/x86_64-linux-gnu/android

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wpointer-arith -Wformat=2 -Wvla -Wimplicit-fallthrough
CFLAGS_BASE := -std=c17 -D_GNU_SOURCE $(WARN) -I. -isystem $(BSSL_INC) -MMD -MP -pthread
CFLAGS += $(OPT) $(CFLAGS_BASE) $(SANFLAGS)
LDFLAGS += $(SANFLAGS) -pthread
# BoringSSL from android-libboringssl-dev, found at run time through the rpath; the system
# OpenSSL is never linked (tests/integration/test_linkage.sh checks with ldd).
LIBS := -L$(BSSL_LIB) -Wl,-rpath,$(BSSL_LIB) -lssl -lcrypto \
        -luring -lhiredis -lutf8proc -lidn2 -linih -ljansson -lcares $(ALLOC_LIBS) -lm

# Module sources. A file named *_main.c holds a program's main() and stays out of the library.
# MODULES, TEST_MODULES and BUILD may be narrowed on the command line to build one module alone
# (e.g. `make BUILD=build/h-core MODULES=core tests`).
MODULES ?= core io tls queue admin daemon bench
TEST_MODULES ?= $(MODULES)
LIB_SRC := $(filter-out %_main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB := $(BUILD)/libcmtp.a

# Programs: name -> file with main(). Built when their main file exists.
PROGS := cmtpd cmtp-send cmtpctl cmtp-bench cmtp-parser-bench cmtp-lmtp-sink
main_cmtpd := daemon/cmtpd_main.c
main_cmtp-send := daemon/send_main.c
main_cmtpctl := admin/cmtpctl_main.c
main_cmtp-bench := bench/bench_main.c
main_cmtp-parser-bench := bench/parser_main.c
main_cmtp-lmtp-sink := bench/lmtp_sink_main.c
PROGS_PRESENT := $(foreach p,$(PROGS),$(if $(wildcard $(main_$(p))),$(p)))
BINS := $(PROGS_PRESENT:%=$(BUILD)/%)

# cmocka unit tests: tests/unit/test_<module>_<what>.c, one program each.
TEST_SRC := $(foreach m,$(TEST_MODULES),$(wildcard tests/unit/test_$(m)_*.c))
TEST_BINS := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_HELPER_SRC := $(wildcard tests/unit/helpers/*.c)
TEST_HELPER_OBJ := $(TEST_HELPER_SRC:%.c=$(BUILD)/obj/%.o)

# libFuzzer targets (clang): tests/fuzz/fuzz_*.c against the pure core.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_LIB_SRC := $(filter-out %_main.c,$(wildcard core/*.c))
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=build/fuzz/obj/%.o)
FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -I. -g -O1 -fsanitize=fuzzer-no-link,address,undefined \
               -fno-sanitize-recover=all -MMD -MP

.PHONY: all tests test run bench bench-quick fuzz check-deps fmt fmt-check clean deps install

all: deps $(BINS)

tests: deps $(TEST_BINS)

deps: build/.deps-ok

build/.deps-ok: scripts/deps.sh
	@bash scripts/deps.sh
	@mkdir -p build && touch $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

define prog_rule
$(BUILD)/$(1): $(BUILD)/obj/$(main_$(1):.c=.o) $(LIB)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LIBS)
endef
$(foreach p,$(PROGS_PRESENT),$(eval $(call prog_rule,$(p))))

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(TEST_HELPER_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

build/fuzz/%: tests/fuzz/%.c $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_OBJ) -lutf8proc -lidn2 -linih

fuzz: deps $(FUZZ_BINS)

# `make test`: release and ASan builds, then every suite (tests/run.sh prints the summary line).
test: deps
	$(MAKE) all tests
	$(MAKE) SAN=asan all tests
	@if command -v $(FUZZ_CC) >/dev/null; then $(MAKE) fuzz; fi
	bash tests/run.sh

run: all
	bash scripts/run.sh

bench: all
	bash bench/run.sh

bench-quick: all
	bash bench/run.sh --quick

# The module rules of STYLE.md, proven by grep (tests/integration/test_check_deps.sh shows that
# it fails on a violation).
check-deps:
	@bash scripts/check-deps.sh .

FMT_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null)
fmt:
	clang-format -i $(FMT_FILES)

fmt-check:
	@clang-format --dry-run -Werror $(FMT_FILES) && echo "fmt-check: ok"

install: all
	install -D -m 0755 build/cmtpd $(DESTDIR)/usr/sbin/cmtpd
	install -D -m 0755 build/cmtpctl $(DESTDIR)/usr/sbin/cmtpctl
	install -D -m 0755 build/cmtp-send $(DESTDIR)/usr/bin/cmtp-send
	install -D -m 0644 docs/man/cmtpd.8 $(DESTDIR)/usr/share/man/man8/cmtpd.8
	install -D -m 0644 docs/man/cmtpctl.8 $(DESTDIR)/usr/share/man/man8/cmtpctl.8
	install -D -m 0644 docs/man/cmtpd.conf.5 $(DESTDIR)/usr/share/man/man5/cmtpd.conf.5
	install -D -m 0644 etc/cmtpd.service $(DESTDIR)/lib/systemd/system/cmtpd.service
	install -D -m 0640 etc/cmtpd.conf $(DESTDIR)/etc/cmtpd/cmtpd.conf

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
