/* SemLock: a POSIX named semaphore shared between processes, the one
 * primitive under every lock, semaphore, condition, event and barrier of
 * multiprocessing_c.synchronize and the size counters of the queues.
 *
 * Kinds: RECURSIVE_MUTEX (0) counts re-entries by its owning thread and
 * may only be released by that thread; SEMAPHORE (1) is a plain counting
 * semaphore (a Lock is a SEMAPHORE with maxvalue 1) that any thread or
 * process may release, as the stdlib allows.
 *
 * Design note (DESIGN.md, "a worker killed while holding a shared lock"):
 * a POSIX semaphore has no owner the kernel knows of, so a process that
 * dies holding one leaves it taken forever.  We keep semaphores anyway:
 * the stdlib's contract lets a Lock be released by another thread or
 * process, which a robust pthread mutex (EOWNERDEAD) cannot express, and
 * Condition/Event/Barrier are built on that freedom.  The remedy lives at
 * the design level instead: pool dispatch must not share a lock a worker
 * can die holding (the parent hands each worker its tasks over its own
 * channel), and queue writers hold the write lock only across a single
 * write of an already pickled frame.
 *
 * Ownership of a recursive lock is per (process, thread): the count lives
 * in this process's memory, and a fork generation counter (bumped by a
 * pthread_atfork child handler) makes a forked child forget what its
 * parent held even before the Python-level _after_fork hook runs.
 */
#include "mpcore.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "structmember.h"

#ifndef SEM_VALUE_MAX
#define SEM_VALUE_MAX INT_MAX
#endif

/* sem_clockwait(CLOCK_MONOTONIC) arrived in glibc 2.30. */
#if defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 30))
#define MP_HAVE_SEM_CLOCKWAIT 1
#endif

enum { RECURSIVE_MUTEX = 0, SEMAPHORE = 1 };

typedef struct {
    PyObject_HEAD
    sem_t *handle;              /* NULL until __init__ has opened it */
    int kind;
    int maxvalue;
    int count;                  /* acquires minus releases in this process */
    int anonymous;              /* handle is a page of our own (see below) */
    unsigned long last_tid;     /* thread that last acquired */
    unsigned long fork_gen;     /* fork generation at that acquire */
    PyObject *name;             /* str, or None once unlinked */
} SemLockObject;

#define SemLock_CAST(op) ((SemLockObject *)(op))

/* Bumped in every forked child: ownership recorded before the fork is
 * void after it.  Only written by the atfork handler (single-threaded
 * child) and read with the GIL held. */
static volatile unsigned long fork_generation = 0;
static int atfork_registered = 0;

static void
semlock_atfork_child(void)
{
    fork_generation++;
}

/* The calling thread.  On Linux PyThread_get_thread_ident() is exactly
 * pthread_self(); calling it directly keeps a call and a check off the
 * uncontended acquire. */
static inline unsigned long
semlock_thread(void)
{
    return (unsigned long)pthread_self();
}

/* True if the calling thread of this process holds the lock. */
static inline int
semlock_ismine(SemLockObject *self)
{
    return self->count > 0 && self->fork_gen == fork_generation &&
           self->last_tid == semlock_thread();
}

/* This process's count, forgetting one inherited across a fork. */
static inline void
semlock_sync_fork(SemLockObject *self)
{
    if (self->fork_gen != fork_generation) {
        self->fork_gen = fork_generation;
        self->count = 0;
    }
}

static inline void
semlock_note_acquired(SemLockObject *self)
{
    semlock_sync_fork(self);
    self->count++;
    self->last_tid = semlock_thread();
}

/* 0 if the object has been opened by __init__ or _rebuild, else -1 with
 * ValueError set (only reachable through SemLock.__new__ alone). */
static int
semlock_closed(SemLockObject *self)
{
    if (self->handle != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "SemLock is not initialized");
    return -1;
}

/* The blocking step for mp_wait_until(): wait for the semaphore `arg`
 * until `deadline`.  Runs with the GIL released. */
static int
semlock_wait_step(void *arg, int64_t deadline)
{
    sem_t *handle = arg;
    if (deadline == MP_FOREVER)
        return sem_wait(handle);
    struct timespec ts;
#ifdef MP_HAVE_SEM_CLOCKWAIT
    /* An absolute monotonic deadline: EINTR retries don't drift. */
    mp_deadline_timespec(deadline, &ts);
    return sem_clockwait(handle, CLOCK_MONOTONIC, &ts);
#else
    /* sem_timedwait wants CLOCK_REALTIME: re-derive the wall-clock
     * deadline from the monotonic one on every retry. */
    int64_t left = deadline - mp_now_ns();
    if (left < 0)
        left = 0;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t at = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + left;
    ts.tv_sec = (time_t)(at / 1000000000LL);
    ts.tv_nsec = (long)(at % 1000000000LL);
    return sem_timedwait(handle, &ts);
#endif
}

/* Takes the semaphore itself (no recursion bookkeeping): at once if it
 * is free, else, when `block`, waiting until `deadline` with the GIL
 * released.  Returns 1 taken, 0 not taken, -1 with an exception set. */
static int
semlock_take(SemLockObject *self, int block, int64_t deadline)
{
    /* Fast path with the GIL held: an uncontended acquire never blocks. */
    int res;
    for (;;) {
        res = sem_trywait(self->handle);
        if (res == 0 || errno == EAGAIN)
            break;
        if (errno != EINTR) {
            mp_set_oserror(errno);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;          /* a signal handler raised */
    }
    if (res < 0) {
        if (!block || (deadline != MP_FOREVER && deadline <= mp_now_ns()))
            return 0;
        int r = mp_wait_until(semlock_wait_step, self->handle, deadline);
        if (r <= 0)
            return r;
    }
    semlock_note_acquired(self);
    return 1;
}

static int semlock_do_release(SemLockObject *self);

/* ---- internal API for other concept files (declared in mpcore.h) ----
 * Plain SEMAPHORE-kind locks only (the queues' read/write locks and size
 * counters); they keep this process's acquire count like acquire() and
 * release() do. */

int
mp_semlock_check(PyObject *obj, mp_state *st)
{
    if (!PyObject_TypeCheck(obj, st->SemLockType)) {
        PyErr_Format(PyExc_TypeError, "expected a SemLock, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (semlock_closed(SemLock_CAST(obj)) < 0)
        return -1;
    if (SemLock_CAST(obj)->kind != SEMAPHORE) {
        PyErr_SetString(PyExc_ValueError, "expected a non-recursive SemLock");
        return -1;
    }
    return 0;
}

int
mp_semlock_acquire_until(PyObject *obj, int64_t deadline)
{
    return semlock_take(SemLock_CAST(obj), 1, deadline);
}

int
mp_semlock_release(PyObject *obj)
{
    return semlock_do_release(SemLock_CAST(obj));
}

PyDoc_STRVAR(semlock_acquire__doc__,
"acquire($self, /, block=True, timeout=None)\n--\n\n"
"Acquire the semaphore/lock.  With block false, or once `timeout` seconds\n"
"have passed, give up and return False.  Returns True when acquired.");

/* Parses acquire()'s (block=True, timeout=None) from a vectorcall.
 * METH_FASTCALL keeps the uncontended acquire as cheap as a C call can
 * be.  Returns 0, or -1 with TypeError set. */
static int
semlock_parse_acquire(PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, PyObject **py_block,
                      PyObject **timeout)
{
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "acquire() takes at most 2 arguments (%zd given)", nargs);
        return -1;
    }
    if (nargs >= 1)
        *py_block = args[0];
    if (nargs == 2)
        *timeout = args[1];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot;
        int pos;
        if (PyUnicode_CompareWithASCIIString(key, "block") == 0) {
            slot = py_block;
            pos = 0;
        }
        else if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
            slot = timeout;
            pos = 1;
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "acquire() got an unexpected keyword argument '%U'", key);
            return -1;
        }
        if (nargs > pos) {
            PyErr_Format(PyExc_TypeError,
                         "acquire() got multiple values for argument '%U'", key);
            return -1;
        }
        *slot = args[nargs + i];
    }
    return 0;
}

/* acquire() without arguments, also __enter__.  Returns 1, or -1 with an
 * exception set. */
static inline int
semlock_acquire_blocking(SemLockObject *self)
{
    if (self->kind == RECURSIVE_MUTEX && semlock_ismine(self)) {
        self->count++;
        return 1;
    }
    if (semlock_closed(self) < 0)
        return -1;
    return semlock_take(self, 1, MP_FOREVER);
}

static PyObject *
semlock_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    SemLockObject *self = SemLock_CAST(op);
    int block = 1;
    PyObject *py_block = NULL, *timeout = Py_None;
    int64_t deadline = MP_FOREVER;

    if (nargs == 0 && kwnames == NULL) {
        if (semlock_acquire_blocking(self) < 0)
            return NULL;
        Py_RETURN_TRUE;
    }
    if (semlock_parse_acquire(args, nargs, kwnames, &py_block, &timeout) < 0)
        return NULL;
    if (py_block != NULL && (block = PyObject_IsTrue(py_block)) < 0)
        return NULL;
    if (self->kind == RECURSIVE_MUTEX && semlock_ismine(self)) {
        self->count++;
        Py_RETURN_TRUE;
    }
    if (semlock_closed(self) < 0)
        return NULL;
    /* The deadline starts now, before the fast path. */
    if (block && timeout != Py_None &&
        mp_deadline_from_timeout(timeout, &deadline) < 0)
        return NULL;
    int r = semlock_take(self, block, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

PyDoc_STRVAR(semlock_release__doc__,
"release($self, /)\n--\n\n"
"Release the semaphore/lock.  Raises AssertionError for a recursive lock\n"
"this thread does not hold, ValueError past a bounded maximum.");

static PyObject *
semlock_too_many(void)
{
    PyErr_SetString(PyExc_ValueError,
                    "semaphore or lock released too many times");
    return NULL;
}

/* release(): 0, or -1 with an exception set. */
static int
semlock_do_release(SemLockObject *self)
{
    if (self->kind == RECURSIVE_MUTEX) {
        if (!semlock_ismine(self)) {
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned "
                            "by thread");
            return -1;
        }
        if (self->count > 1) {
            self->count--;
            return 0;
        }
    }
    else if (semlock_closed(self) < 0) {
        return -1;
    }
    else if (self->maxvalue == 1) {
        /* A Lock: it must be taken now.  sem_trywait answers that
         * without the full barrier glibc's sem_getvalue costs, which
         * would make every uncontended release ~40% slower. */
        if (sem_trywait(self->handle) == 0) {
            (void)sem_post(self->handle);
            semlock_too_many();
            return -1;
        }
        if (errno != EAGAIN && errno != EINTR) {
            mp_set_oserror(errno);
            return -1;
        }
    }
    else if (self->maxvalue < SEM_VALUE_MAX) {
        /* Bounded: refuse to go past maxvalue.  (Two racing releasers can
         * both pass this check; the stdlib has the same window.) */
        int value;
        if (sem_getvalue(self->handle, &value) < 0) {
            mp_set_oserror(errno);
            return -1;
        }
        if (value >= self->maxvalue) {
            semlock_too_many();
            return -1;
        }
    }
    if (sem_post(self->handle) < 0) {
        if (errno == EOVERFLOW)
            semlock_too_many();
        else
            mp_set_oserror(errno);
        return -1;
    }
    semlock_sync_fork(self);
    self->count--;
    return 0;
}

/* METH_FASTCALL rather than METH_NOARGS: the interpreter specializes
 * calls of bound FASTCALL builtins (`release()` through a bound method,
 * as Lock binds it), not of NOARGS ones. */
static PyObject *
semlock_release(PyObject *op, PyObject *const *Py_UNUSED(args),
                Py_ssize_t nargs)
{
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError,
                     "release() takes no arguments (%zd given)", nargs);
        return NULL;
    }
    if (semlock_do_release(SemLock_CAST(op)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(semlock_enter__doc__,
"__enter__($self, /)\n--\n\n"
"Acquire the semaphore/lock, blocking.");

static PyObject *
semlock_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (semlock_acquire_blocking(SemLock_CAST(op)) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(semlock_exit__doc__,
"__exit__($self, exc_type=None, exc_value=None, exc_tb=None, /)\n--\n\n"
"Release the semaphore/lock.");

static PyObject *
semlock_exit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t nargs)
{
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "__exit__ expected at most 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (semlock_do_release(SemLock_CAST(op)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(semlock_count__doc__,
"_count($self, /)\n--\n\n"
"Number of acquire()s minus release()s by this process.");

static PyObject *
semlock_count(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    SemLockObject *self = SemLock_CAST(op);
    return PyLong_FromLong(self->fork_gen == fork_generation ? self->count : 0);
}

PyDoc_STRVAR(semlock_is_mine__doc__,
"_is_mine($self, /)\n--\n\n"
"Whether this thread of this process holds the lock.");

static PyObject *
semlock_is_mine(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(semlock_ismine(SemLock_CAST(op)));
}

/* Returns 0 and the current value (never negative), or -1 with OSError. */
static int
semlock_value(SemLockObject *self, int *value)
{
    if (semlock_closed(self) < 0)
        return -1;
    if (sem_getvalue(self->handle, value) < 0) {
        mp_set_oserror(errno);
        return -1;
    }
    /* POSIX lets an implementation report waiters as a negative value. */
    if (*value < 0)
        *value = 0;
    return 0;
}

PyDoc_STRVAR(semlock_get_value__doc__,
"_get_value($self, /)\n--\n\n"
"The semaphore's current value.");

static PyObject *
semlock_get_value(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    int value;
    if (semlock_value(SemLock_CAST(op), &value) < 0)
        return NULL;
    return PyLong_FromLong(value);
}

PyDoc_STRVAR(semlock_is_zero__doc__,
"_is_zero($self, /)\n--\n\n"
"Whether the semaphore's value is zero.");

static PyObject *
semlock_is_zero(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    int value;
    if (semlock_value(SemLock_CAST(op), &value) < 0)
        return NULL;
    return PyBool_FromLong(value == 0);
}

PyDoc_STRVAR(semlock_after_fork__doc__,
"_after_fork($self, /)\n--\n\n"
"Forget this process's acquisitions (called in a forked child).");

static PyObject *
semlock_after_fork(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    SemLockObject *self = SemLock_CAST(op);
    self->count = 0;
    self->fork_gen = fork_generation;
    Py_RETURN_NONE;
}

/* Opens (creating if `create`) the semaphore `name` with the GIL
 * released.  Returns the handle, or SEM_FAILED with OSError set (naming
 * the semaphore) or a signal handler's exception. */
static sem_t *
semlock_open(PyObject *py_name, const char *name, int create, unsigned int value)
{
    sem_t *handle;
    int err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (create)
            handle = sem_open(name, O_CREAT | O_EXCL, S_IRUSR | S_IWUSR, value);
        else
            handle = sem_open(name, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (handle != SEM_FAILED)
            return handle;
        if (err != EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return SEM_FAILED;
    }
    errno = err;
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, py_name);
    return SEM_FAILED;
}

/* A semaphore no other process will ever look up by name (the creator
 * asked for it unlinked): a sem_t of its own in a shared anonymous page.
 * Children inherit the page through fork exactly as they inherit an
 * unlinked named semaphore's mapping, and the page lives until the last
 * process unmaps it; but there is no file to create, link and unlink.
 * Returns the handle, or SEM_FAILED with OSError set. */
static sem_t *
semlock_open_anonymous(unsigned int value)
{
    void *page = mmap(NULL, sizeof(sem_t), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        mp_set_oserror(errno);
        return SEM_FAILED;
    }
    if (sem_init((sem_t *)page, 1, value) < 0) {
        int err = errno;
        munmap(page, sizeof(sem_t));
        mp_set_oserror(err);
        return SEM_FAILED;
    }
    return (sem_t *)page;
}

/* Gives up this process's handle (the semaphore itself lives on in every
 * other process that has it). */
static void
semlock_close_handle(SemLockObject *self)
{
    if (self->handle == NULL)
        return;
    if (self->anonymous)
        munmap(self->handle, sizeof(sem_t));
    else
        sem_close(self->handle);
    self->handle = NULL;
}

/* Makes `self` the owner of the open `handle`. */
static void
semlock_adopt(SemLockObject *self, sem_t *handle, int anonymous, int kind,
              int maxvalue, PyObject *name)
{
    self->handle = handle;
    self->anonymous = anonymous;
    self->kind = kind;
    self->maxvalue = maxvalue;
    self->count = 0;
    self->last_tid = 0;
    self->fork_gen = fork_generation;
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
}

static int
semlock_check_kind(int kind)
{
    if (kind != RECURSIVE_MUTEX && kind != SEMAPHORE) {
        PyErr_SetString(PyExc_ValueError, "unrecognized kind");
        return -1;
    }
    return 0;
}

/* The UTF-8 of a semaphore name, or NULL with ValueError set (empty, or
 * holding a NUL) or the encoding error. */
static const char *
semlock_name_utf8(PyObject *py_name)
{
    Py_ssize_t len;
    const char *name = PyUnicode_AsUTF8AndSize(py_name, &len);
    if (name == NULL)
        return NULL;
    if ((size_t)len != strlen(name)) {
        PyErr_SetString(PyExc_ValueError, "embedded null character");
        return NULL;
    }
    if (len == 0) {
        PyErr_SetString(PyExc_ValueError, "semaphore name must not be empty");
        return NULL;
    }
    return name;
}

/* SemLock.__new__ only allocates: __init__ opens the semaphore, so that
 * Python subclasses (the synchronize module's Lock, RLock, ...) create
 * theirs from their own __init__ and are SemLocks themselves, with
 * acquire/release/__enter__/__exit__ reached as C methods. */
static PyObject *
semlock_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
            PyObject *Py_UNUSED(kwds))
{
    SemLockObject *self = (SemLockObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->kind = SEMAPHORE;     /* so that every method finds it closed */
    self->fork_gen = fork_generation;
    Py_INCREF(Py_None);
    self->name = Py_None;
    return (PyObject *)self;
}

static int
semlock_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "value", "maxvalue", "name", "unlink", NULL};
    SemLockObject *self = SemLock_CAST(op);
    int kind, value, maxvalue, unlink;
    PyObject *py_name;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiUp:SemLock", kwlist,
                                     &kind, &value, &maxvalue, &py_name,
                                     &unlink))
        return -1;
    if (semlock_check_kind(kind) < 0)
        return -1;
    if (value < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "semaphore initial value must be >= 0");
        return -1;
    }
    const char *name = semlock_name_utf8(py_name);
    if (name == NULL)
        return -1;
    if (self->handle != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SemLock is already initialized");
        return -1;
    }
    sem_t *handle;
    if (unlink) {
        /* Nobody will open it by name: travels only through fork. */
        handle = semlock_open_anonymous((unsigned int)value);
        py_name = Py_None;
    }
    else {
        handle = semlock_open(py_name, name, 1, (unsigned int)value);
    }
    if (handle == SEM_FAILED)
        return -1;
    semlock_adopt(self, handle, unlink, kind, maxvalue, py_name);
    return 0;
}

PyDoc_STRVAR(semlock_rebuild__doc__,
"_rebuild($type, handle, kind, maxvalue, name, /)\n--\n\n"
"Re-open the named semaphore `name` in this process (the unpickling side\n"
"of process creation).  `handle` is the creator's and is not used.");

static PyObject *
semlock_rebuild(PyObject *cls, PyObject *args)
{
    PyObject *py_handle, *py_name;
    int kind, maxvalue;

    if (!PyArg_ParseTuple(args, "OiiO:_rebuild", &py_handle, &kind, &maxvalue,
                          &py_name))
        return NULL;
    if (semlock_check_kind(kind) < 0)
        return NULL;
    if (py_name == Py_None) {
        /* A handle is an address in the creator's memory; trusting it here
         * could crash.  Unnamed semaphores travel only by fork. */
        PyErr_SetString(PyExc_ValueError,
                        "cannot rebuild an unnamed (already unlinked) "
                        "semaphore; it can only be inherited through fork");
        return NULL;
    }
    if (!PyUnicode_Check(py_name)) {
        PyErr_Format(PyExc_TypeError, "name must be str or None, not %.100s",
                     Py_TYPE(py_name)->tp_name);
        return NULL;
    }
    const char *name = semlock_name_utf8(py_name);
    if (name == NULL)
        return NULL;
    PyTypeObject *type = (PyTypeObject *)cls;
    SemLockObject *self = (SemLockObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    sem_t *handle = semlock_open(py_name, name, 0, 0);
    if (handle == SEM_FAILED) {
        Py_DECREF(self);
        return NULL;
    }
    semlock_adopt(self, handle, 0, kind, maxvalue, py_name);
    return (PyObject *)self;
}

static int
semlock_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(SemLock_CAST(op)->name);
    return 0;
}

static int
semlock_clear(PyObject *op)
{
    Py_CLEAR(SemLock_CAST(op)->name);
    return 0;
}

static void
semlock_dealloc(PyObject *op)
{
    SemLockObject *self = SemLock_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    semlock_close_handle(self);
    (void)semlock_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
semlock_get_handle(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromVoidPtr(SemLock_CAST(op)->handle);
}

static PyObject *
semlock_get_kind(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(SemLock_CAST(op)->kind);
}

static PyObject *
semlock_get_maxvalue(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(SemLock_CAST(op)->maxvalue);
}

static PyObject *
semlock_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *name = SemLock_CAST(op)->name;
    if (name == NULL)
        name = Py_None;
    Py_INCREF(name);
    return name;
}

static PyGetSetDef semlock_getset[] = {
    {"handle", semlock_get_handle, NULL, "the semaphore's address in this process", NULL},
    {"kind", semlock_get_kind, NULL, "RECURSIVE_MUTEX (0) or SEMAPHORE (1)", NULL},
    {"maxvalue", semlock_get_maxvalue, NULL, "the bound checked by release()", NULL},
    {"name", semlock_get_name, NULL, "the semaphore's name, None once unlinked", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef semlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))semlock_acquire,
     METH_FASTCALL | METH_KEYWORDS, semlock_acquire__doc__},
    {"release", (PyCFunction)(void (*)(void))semlock_release, METH_FASTCALL,
     semlock_release__doc__},
    {"__enter__", semlock_enter, METH_NOARGS, semlock_enter__doc__},
    {"__exit__", (PyCFunction)(void (*)(void))semlock_exit, METH_FASTCALL,
     semlock_exit__doc__},
    {"_count", semlock_count, METH_NOARGS, semlock_count__doc__},
    {"_is_mine", semlock_is_mine, METH_NOARGS, semlock_is_mine__doc__},
    {"_get_value", semlock_get_value, METH_NOARGS, semlock_get_value__doc__},
    {"_is_zero", semlock_is_zero, METH_NOARGS, semlock_is_zero__doc__},
    {"_rebuild", semlock_rebuild, METH_VARARGS | METH_CLASS, semlock_rebuild__doc__},
    {"_after_fork", semlock_after_fork, METH_NOARGS, semlock_after_fork__doc__},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(semlock__doc__,
"SemLock(kind, value, maxvalue, name, unlink)\n--\n\n"
"A semaphore or recursive lock shared between processes, on a POSIX named\n"
"semaphore.  With `unlink` true the name is removed at once (the object\n"
"then travels only through fork) and `name` reads None.");

static PyType_Slot semlock_slots[] = {
    {Py_tp_doc, (void *)semlock__doc__},
    {Py_tp_new, semlock_new},
    {Py_tp_init, semlock_init},
    {Py_tp_dealloc, semlock_dealloc},
    {Py_tp_traverse, semlock_traverse},
    {Py_tp_clear, semlock_clear},
    {Py_tp_methods, semlock_methods},
    {Py_tp_getset, semlock_getset},
    {0, NULL},
};

static PyType_Spec semlock_spec = {
    .name = "multiprocessing_c._mpcore.SemLock",
    .basicsize = sizeof(SemLockObject),
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
              Py_TPFLAGS_IMMUTABLETYPE),
    .slots = semlock_slots,
};

/* ------------------------------------------------------------------ */
/* LockedField: a field of a shared object, read and written under a   */
/* lock                                                                 */
/* ------------------------------------------------------------------ */

/* sharedctypes' synchronized wrappers keep the shared ctypes object in
 * `_obj` and their lock's bound acquire/release as `acquire`/`release`.
 * LockedField(name) is the data descriptor behind their `value`, `raw`
 * and structure fields: it calls wrapper.acquire(), reads or writes
 * wrapper._obj.<name>, and calls wrapper.release(), all from C, so a
 * locked read costs no Python frame when the lock is a SemLock (whose
 * bound methods are C functions themselves).  Any lock object with
 * acquire() and release() works. */
typedef struct {
    PyObject_HEAD
    PyObject *field;            /* str: the wrapped object's attribute */
    PyObject *doc;              /* str or None */
    PyObject *s_acquire, *s_release, *s_obj;    /* interned names */
} LockedFieldObject;

#define LockedField_CAST(op) ((LockedFieldObject *)(op))

/* The wrapper's attribute `name` (a new reference): from its instance
 * dict `dict` when it is there, as SynchronizedBase.__init__ puts all
 * three the descriptor needs, else by ordinary lookup.  NULL with an
 * exception set on failure. */
static PyObject *
lockedfield_part(PyObject *dict, PyObject *wrapper, PyObject *name)
{
    if (dict != NULL) {
        PyObject *v = PyDict_GetItemWithError(dict, name);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
        if (PyErr_Occurred())
            return NULL;
    }
    return PyObject_GetAttr(wrapper, name);
}

/* Calls wrapper.<name>(), running a SemLock's own bound acquire() or
 * release() in place.  Returns 0, or -1 with an exception set. */
static int
lockedfield_call(PyObject *dict, PyObject *wrapper, PyObject *name)
{
    PyObject *meth = lockedfield_part(dict, wrapper, name);
    if (meth == NULL)
        return -1;
    int rc;
    PyCFunction fn = PyCFunction_Check(meth) ? PyCFunction_GET_FUNCTION(meth)
                                             : NULL;
    if (fn == (PyCFunction)(void (*)(void))semlock_acquire)
        rc = semlock_acquire_blocking(SemLock_CAST(PyCFunction_GET_SELF(meth)));
    else if (fn == (PyCFunction)(void (*)(void))semlock_release)
        rc = semlock_do_release(SemLock_CAST(PyCFunction_GET_SELF(meth)));
    else {
        PyObject *r = PyObject_CallNoArgs(meth);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    Py_DECREF(meth);
    return rc < 0 ? -1 : 0;
}

/* Takes the wrapper's lock.  Sets *dict to a new reference to its
 * instance dict (NULL if it has none) for lockedfield_leave().  Returns
 * 0, or -1 with an exception set (and *dict cleared). */
static int
lockedfield_enter(LockedFieldObject *f, PyObject *wrapper, PyObject **dict)
{
    *dict = NULL;
    if (Py_TYPE(wrapper)->tp_dictoffset != 0 &&
        (*dict = PyObject_GenericGetDict(wrapper, NULL)) == NULL)
        return -1;
    if (lockedfield_call(*dict, wrapper, f->s_acquire) < 0) {
        Py_CLEAR(*dict);
        return -1;
    }
    return 0;
}

/* wrapper.release() as a `finally:` clause runs it: with an exception
 * already set, that exception stays (or becomes the context of one the
 * release raises).  Drops `dict`.  Returns 0, or -1 if an exception is
 * set after it. */
static int
lockedfield_leave(LockedFieldObject *f, PyObject *wrapper, PyObject *dict)
{
    int rc;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *pending = PyErr_GetRaisedException();
    rc = lockedfield_call(dict, wrapper, f->s_release);
    if (pending != NULL) {
        if (rc < 0) {
            PyObject *now = PyErr_GetRaisedException();
            PyException_SetContext(now, pending);   /* steals `pending` */
            PyErr_SetRaisedException(now);
        }
        else {
            PyErr_SetRaisedException(pending);
        }
        rc = -1;
    }
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    rc = lockedfield_call(dict, wrapper, f->s_release);
    if (type != NULL) {
        if (rc < 0) {
            /* Take the release's error out first: normalizing may call
             * an exception class, which needs no exception set. */
            PyObject *type2, *value2, *tb2;
            PyErr_Fetch(&type2, &value2, &tb2);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb != NULL)
                PyException_SetTraceback(value, tb);
            PyErr_NormalizeException(&type2, &value2, &tb2);
            PyException_SetContext(value2, value);  /* steals `value` */
            Py_DECREF(type);
            Py_XDECREF(tb);
            PyErr_Restore(type2, value2, tb2);
        }
        else {
            PyErr_Restore(type, value, tb);
        }
        rc = -1;
    }
#endif
    Py_XDECREF(dict);
    return rc;
}

static PyObject *
lockedfield_get(PyObject *op, PyObject *wrapper, PyObject *Py_UNUSED(type))
{
    LockedFieldObject *f = LockedField_CAST(op);
    PyObject *dict;
    if (wrapper == NULL || wrapper == Py_None) {
        Py_INCREF(op);
        return op;
    }
    if (lockedfield_enter(f, wrapper, &dict) < 0)
        return NULL;
    PyObject *value = NULL;
    PyObject *obj = lockedfield_part(dict, wrapper, f->s_obj);
    if (obj != NULL) {
        value = PyObject_GetAttr(obj, f->field);
        Py_DECREF(obj);
    }
    if (lockedfield_leave(f, wrapper, dict) < 0)
        Py_CLEAR(value);
    return value;
}

static int
lockedfield_set(PyObject *op, PyObject *wrapper, PyObject *value)
{
    LockedFieldObject *f = LockedField_CAST(op);
    PyObject *dict;
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError,
                     "locked field %R of %.100s objects cannot be deleted",
                     f->field, Py_TYPE(wrapper)->tp_name);
        return -1;
    }
    if (lockedfield_enter(f, wrapper, &dict) < 0)
        return -1;
    int rc = -1;
    PyObject *obj = lockedfield_part(dict, wrapper, f->s_obj);
    if (obj != NULL) {
        rc = PyObject_SetAttr(obj, f->field, value);
        Py_DECREF(obj);
    }
    if (lockedfield_leave(f, wrapper, dict) < 0)
        rc = -1;
    return rc;
}

static PyObject *
lockedfield_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "doc", NULL};
    PyObject *field, *doc = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|O:LockedField", kwlist,
                                     &field, &doc))
        return NULL;
    LockedFieldObject *f = (LockedFieldObject *)type->tp_alloc(type, 0);
    if (f == NULL)
        return NULL;
    Py_INCREF(field);
    f->field = field;
    Py_INCREF(doc);
    f->doc = doc;
    f->s_acquire = PyUnicode_InternFromString("acquire");
    f->s_release = PyUnicode_InternFromString("release");
    f->s_obj = PyUnicode_InternFromString("_obj");
    if (f->s_acquire == NULL || f->s_release == NULL || f->s_obj == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    return (PyObject *)f;
}

static void
lockedfield_dealloc(PyObject *op)
{
    LockedFieldObject *f = LockedField_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    Py_XDECREF(f->field);
    Py_XDECREF(f->doc);
    Py_XDECREF(f->s_acquire);
    Py_XDECREF(f->s_release);
    Py_XDECREF(f->s_obj);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
lockedfield_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<%s %R>", Py_TYPE(op)->tp_name,
                                LockedField_CAST(op)->field);
}

static PyObject *
lockedfield_get_doc(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *doc = LockedField_CAST(op)->doc;
    Py_INCREF(doc);
    return doc;
}

static PyMemberDef lockedfield_members[] = {
    {"name", T_OBJECT, offsetof(LockedFieldObject, field), READONLY,
     "The wrapped object's attribute."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef lockedfield_getset[] = {
    {"__doc__", lockedfield_get_doc, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot lockedfield_slots[] = {
    {Py_tp_new, lockedfield_new},
    {Py_tp_dealloc, lockedfield_dealloc},
    {Py_tp_repr, lockedfield_repr},
    {Py_tp_descr_get, lockedfield_get},
    {Py_tp_descr_set, lockedfield_set},
    {Py_tp_members, lockedfield_members},
    {Py_tp_getset, lockedfield_getset},
    {0, NULL},
};

static PyType_Spec lockedfield_spec = {
    .name = "multiprocessing_c._mpcore.LockedField",
    .basicsize = sizeof(LockedFieldObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lockedfield_slots,
};

PyDoc_STRVAR(sem_unlink__doc__,
"sem_unlink(name, /)\n--\n\n"
"Remove the named semaphore `name` (FileNotFoundError if there is none).");

static PyObject *
semaphore_sem_unlink(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t len;
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "sem_unlink() argument must be str, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8AndSize(arg, &len);
    if (name == NULL)
        return NULL;
    if ((size_t)len != strlen(name)) {
        PyErr_SetString(PyExc_ValueError, "embedded null character");
        return NULL;
    }
    if (sem_unlink(name) < 0)
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
    Py_RETURN_NONE;
}

static PyMethodDef semaphore_functions[] = {
    {"sem_unlink", semaphore_sem_unlink, METH_O, sem_unlink__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_semaphore_init(PyObject *module, mp_state *st)
{
    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, semlock_atfork_child) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
            return -1;
        }
        atfork_registered = 1;
    }
    PyObject *tp = PyType_FromModuleAndSpec(module, &semlock_spec, NULL);
    if (tp == NULL)
        return -1;
    st->SemLockType = (PyTypeObject *)tp;
    /* A class constant, as in the stdlib; the type is immutable to
     * Python code, so set it in the type dict directly. */
    PyObject *vmax = PyLong_FromLong(SEM_VALUE_MAX);
    if (vmax == NULL)
        return -1;
    int rc = PyDict_SetItemString(st->SemLockType->tp_dict, "SEM_VALUE_MAX", vmax);
    Py_DECREF(vmax);
    if (rc < 0)
        return -1;
    PyType_Modified(st->SemLockType);
    /* PyModule_AddObject steals only on success (PyModule_AddObjectRef
     * is 3.10+). */
    Py_INCREF(tp);
    if (PyModule_AddObject(module, "SemLock", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "RECURSIVE_MUTEX", RECURSIVE_MUTEX) < 0 ||
        PyModule_AddIntConstant(module, "SEMAPHORE", SEMAPHORE) < 0)
        return -1;
    PyObject *flags = Py_BuildValue("{s:i,s:i}", "HAVE_SEM_OPEN", 1,
                                    "HAVE_SEM_TIMEDWAIT", 1);
    if (flags == NULL)
        return -1;
    if (PyModule_AddObject(module, "flags", flags) < 0) {
        Py_DECREF(flags);
        return -1;
    }
    PyObject *lf = PyType_FromModuleAndSpec(module, &lockedfield_spec, NULL);
    if (lf == NULL)
        return -1;
    rc = PyModule_AddType(module, (PyTypeObject *)lf);
    Py_DECREF(lf);
    if (rc < 0)
        return -1;
    return PyModule_AddFunctions(module, semaphore_functions);
}
