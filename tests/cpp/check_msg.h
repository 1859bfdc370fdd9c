// CHECK(cond, printf-format, ...) for the kernel tests: counts checks and failures (printing the first 30
// with a message); main prints the totals and returns nonzero on any failure.
#pragma once

#include <cstdio>

static int g_failures = 0;
static int g_checks = 0;
#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        ++g_checks;                                                                  \
        if (!(cond)) {                                                               \
            if (++g_failures <= 30) {                                                \
                std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
                std::fprintf(stderr, __VA_ARGS__);                                   \
                std::fprintf(stderr, "\n");                                          \
            }                                                                        \
        }                                                                            \
    } while (0)
