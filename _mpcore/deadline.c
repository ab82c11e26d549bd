/* Timeouts as absolute CLOCK_MONOTONIC deadlines, so that a wait that is
 * interrupted and retried never drifts and never follows the wall clock. */
#include "mpcore.h"

#include <limits.h>
#include <math.h>

#define NS_PER_SEC 1000000000LL

int64_t
mp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

int
mp_deadline_from_timeout(PyObject *timeout, int64_t *deadline)
{
    if (timeout == NULL || timeout == Py_None) {
        *deadline = MP_FOREVER;
        return 0;
    }
    double secs = PyFloat_AsDouble(timeout);
    if (secs == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(secs)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    if (secs < 0)
        secs = 0;
    /* Anything beyond ~292 years is as good as forever. */
    if (secs > (double)(INT64_MAX / NS_PER_SEC) / 2) {
        *deadline = MP_FOREVER;
        return 0;
    }
    *deadline = mp_now_ns() + (int64_t)(secs * (double)NS_PER_SEC);
    return 0;
}

int
mp_deadline_remaining_ms(int64_t deadline)
{
    if (deadline == MP_FOREVER)
        return -1;
    int64_t left = deadline - mp_now_ns();
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

void
mp_deadline_timespec(int64_t deadline, struct timespec *ts)
{
    ts->tv_sec = (time_t)(deadline / NS_PER_SEC);
    ts->tv_nsec = (long)(deadline % NS_PER_SEC);
}

int
mp_wait_until(mp_wait_step step, void *arg, int64_t deadline)
{
    for (;;) {
        int res, err;
        Py_BEGIN_ALLOW_THREADS
        res = step(arg, deadline);
        err = errno;
        Py_END_ALLOW_THREADS
        if (res >= 0)
            return 1;
        switch (err) {
        case ETIMEDOUT:
            return 0;
        case EINTR:
            if (PyErr_CheckSignals() < 0)
                return -1;
            break;
        default:
            mp_set_oserror(err);
            return -1;
        }
    }
}
