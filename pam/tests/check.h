/* A minimal test harness: CHECK records a failure with its line and goes on. */
#ifndef CHECK_H
#define CHECK_H
#include <stdio.h>

static int check_failures, check_count;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        check_count++;                                                                    \
        if (!(cond)) {                                                                    \
            check_failures++;                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                                 \
    } while (0)

#define CHECK_STR(got, want)                                                              \
    do {                                                                                  \
        check_count++;                                                                    \
        if (strcmp((got), (want)) != 0) {                                                 \
            check_failures++;                                                             \
            fprintf(stderr, "%s:%d: got \"%s\", want \"%s\"\n", __FILE__, __LINE__, (got), \
                    (want));                                                              \
        }                                                                                 \
    } while (0)

#define CHECK_HAS(got, part)                                                              \
    do {                                                                                  \
        check_count++;                                                                    \
        if (strstr((got), (part)) == NULL) {                                              \
            check_failures++;                                                             \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
                    (got), (part));                                                       \
        }                                                                                 \
    } while (0)
#endif
