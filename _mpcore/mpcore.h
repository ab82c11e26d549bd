/* Shared declarations for the _mpcore extension.
 *
 * One C file per concept (spawn, deadline, semaphore, connection, heap,
 * forkserver); each exports one `mp_<concept>_init(module, state)` that
 * module.c calls from its exec slot.  Everything else is static.
 */
#ifndef MPCORE_H
#define MPCORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <time.h>

/* Per-module state (PEP 573/630).  m_traverse/m_clear in module.c list
 * the same PyObject fields in the same order: keep them in step. */
typedef struct {
    PyTypeObject *SemLockType;      /* semaphore.c */
    PyTypeObject *ConnectionType;   /* connection.c */
    PyTypeObject *ArenaType;        /* heap.c */
    PyTypeObject *BlockType;        /* heap.c */
    PyTypeObject *HeapType;         /* heap.c */
    PyObject *pickle_dumps;         /* pickling.c: the full pickler's */
    PyObject *pickle_loads;         /*   dumps and loads, registered */
} mp_state;

extern PyModuleDef mp_module_def;

static inline mp_state *
mp_get_state(PyObject *module)
{
    return (mp_state *)PyModule_GetState(module);
}

/* PyType_GetModuleByDef arrived in 3.11; walk the MRO ourselves before. */
#if PY_VERSION_HEX < 0x030B0000
static inline PyObject *
mp_type_module_by_def(PyTypeObject *tp, PyModuleDef *def)
{
    PyObject *mro = tp->tp_mro;
    for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!(t->tp_flags & Py_TPFLAGS_HEAPTYPE))
            continue;
        PyObject *m = PyType_GetModule(t);
        if (m == NULL) {
            PyErr_Clear();
            continue;
        }
        if (PyModule_GetDef(m) == def)
            return m;
    }
    PyErr_Format(PyExc_TypeError, "%s is not a type of _mpcore", tp->tp_name);
    return NULL;
}
#else
#define mp_type_module_by_def(tp, def) PyType_GetModuleByDef((tp), (def))
#endif

/* Returns the state of the module that defined `tp` (or a base of it);
 * NULL with an exception set if there is none. */
static inline mp_state *
mp_get_state_by_type(PyTypeObject *tp)
{
    PyObject *mod = mp_type_module_by_def(tp, &mp_module_def);
    return mod ? mp_get_state(mod) : NULL;
}

#ifndef Py_TPFLAGS_IMMUTABLETYPE    /* 3.10+ */
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

/* The one blocking-call idiom (PEP 475).  Runs `call` with the GIL
 * released, retrying while it fails with EINTR and no signal handler
 * raised.  Afterwards `res` is the call's result, `err` its errno, and
 * `async_err` non-zero if a handler raised (the exception is then set).
 * `call` must not touch Python objects. */
#define MP_RETRY_EINTR(res, call, err, async_err)                           \
    do {                                                                    \
        (async_err) = 0;                                                    \
        do {                                                                \
            Py_BEGIN_ALLOW_THREADS                                          \
            (res) = (call);                                                 \
            (err) = errno;                                                  \
            Py_END_ALLOW_THREADS                                            \
        } while ((res) < 0 && (err) == EINTR &&                             \
                 !((async_err) = PyErr_CheckSignals()));                    \
    } while (0)

/* Raise OSError (the errno-specific subclass) for `err`.  Returns NULL. */
PyObject *mp_set_oserror(int err);

/* ---- deadline.c: timeouts against CLOCK_MONOTONIC ---- */

#define MP_FOREVER ((int64_t)-1)

/* Current CLOCK_MONOTONIC time in nanoseconds. */
int64_t mp_now_ns(void);

/* None -> MP_FOREVER; a real number of seconds -> now + max(t, 0).
 * Returns 0, or -1 with TypeError/ValueError set. */
int mp_deadline_from_timeout(PyObject *timeout, int64_t *deadline);

/* Milliseconds left for poll(): -1 for MP_FOREVER, else >= 0, rounded up
 * so that a wait never returns before its deadline. */
int mp_deadline_remaining_ms(int64_t deadline);

/* The absolute CLOCK_MONOTONIC timespec of a finite deadline. */
void mp_deadline_timespec(int64_t deadline, struct timespec *ts);

/* One blocking step of a timed wait, run with the GIL released (so it
 * must not touch Python objects).  It waits until its event or
 * `deadline` (MP_FOREVER: no limit) and returns >= 0 when the event came,
 * or -1 with errno set: ETIMEDOUT once the deadline has passed, EINTR to
 * be retried, anything else an error. */
typedef int (*mp_wait_step)(void *arg, int64_t deadline);

/* The timed-wait loop shared by every blocking primitive: runs `step`
 * with the GIL released; on EINTR runs the signal handlers (so Ctrl-C
 * ends the wait) and retries against the same absolute deadline, so
 * retries never stretch the timeout.  Call with the GIL held.  Returns 1
 * when the event came, 0 on timeout, -1 with an exception set. */
int mp_wait_until(mp_wait_step step, void *arg, int64_t deadline);

/* ---- semaphore.c: SemLock internals for other concept files ----
 * For non-recursive SemLocks only; all three need the GIL. */

/* 0 if `obj` is a non-recursive SemLock of this module, else -1 with
 * TypeError/ValueError set. */
int mp_semlock_check(PyObject *obj, mp_state *st);

/* Acquire by `deadline` (MP_FOREVER: no limit), the GIL released while
 * blocked.  1 acquired, 0 timed out, -1 with an exception set. */
int mp_semlock_acquire_until(PyObject *obj, int64_t deadline);

/* release(): 0, or -1 with an exception set. */
int mp_semlock_release(PyObject *obj);

/* ---- pickling.c: plain data pickled and read in C ----
 * mp_pickle_encode writes what pickle.dumps(obj, 4) writes, after `room`
 * bytes left free for the caller, into `stackbuf` or, if it outgrows it,
 * the heap.  Returns 1 with *out and *outlen set (free with
 * mp_pickle_release), 0 if `obj` is not plain data the fast path
 * handles (nothing to free, no exception), -1 with an exception set. */
int mp_pickle_encode(PyObject *obj, size_t room, char *stackbuf,
                     size_t stacksize, char **out, size_t *outlen);
void mp_pickle_release(char *out, char *stackbuf);
/* A new reference, or NULL, never with an exception set, if the fast
 * path does not read `data`. */
PyObject *mp_pickle_decode(const char *data, size_t len);
/* The registered full pickler's dumps(obj): a new reference or NULL. */
PyObject *mp_pickle_dumps_fallback(mp_state *st, PyObject *obj);
/* Unpickles data[0..len), by the fast path or the full unpickler (which
 * gets `owner`, the bytes object holding the data, if not NULL). */
PyObject *mp_pickle_loads(mp_state *st, const char *data, size_t len,
                          PyObject *owner);

/* ---- one init per concept, called in order by module.c ---- */
int mp_spawn_init(PyObject *module, mp_state *st);
int mp_heap_init(PyObject *module, mp_state *st);
int mp_shm_init(PyObject *module, mp_state *st);
int mp_connection_init(PyObject *module, mp_state *st);
int mp_wait_init(PyObject *module, mp_state *st);
int mp_fdpass_init(PyObject *module, mp_state *st);
int mp_semaphore_init(PyObject *module, mp_state *st);
int mp_queue_init(PyObject *module, mp_state *st);
int mp_pickling_init(PyObject *module, mp_state *st);
int mp_forkserver_init(PyObject *module, mp_state *st);

#endif /* MPCORE_H */
