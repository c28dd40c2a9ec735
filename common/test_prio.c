/* Unit tests for common/prio: the calling thread, and only it, becomes a
 * batch thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>

#include "common/prio.h"

static void *helper(void *arg)
{
    int *policy = arg;
    policy[0] = sched_getscheduler(0);
    policy[1] = vl_prio_background();
    policy[2] = sched_getscheduler(0);
    return NULL;
}

static void test_background_thread(void **state)
{
    (void)state;
    int before = sched_getscheduler(0);
    int policy[3] = {-1, -1, -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, helper, policy), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(policy[0], before); /* a new thread starts as its creator */
    assert_int_equal(policy[1], 0);
    assert_int_equal(policy[2], SCHED_BATCH);
    assert_int_equal(sched_getscheduler(0), before); /* the caller's thread only */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_background_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
