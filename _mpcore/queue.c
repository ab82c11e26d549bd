/* The queues' data path: one C call moves one pickled frame through a
 * pipe, with the cross-process lock taken and released around it.
 *
 * Frames are the connection format: a 4-byte big-endian length, or -1
 * followed by an 8-byte length for payloads of 2 GiB - 1 and more.
 *
 * Both calls keep a frame whole even when a signal handler raises in
 * the middle of one: once the first byte of a frame has moved, the rest
 * moves too and the exception is raised afterwards, so the pipe never
 * holds half a frame that would desynchronise every later reader.
 */
#include "mpcore.h"

#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#define FRAME_SMALL_MAX 0x7fffffffLL

/* Builds the header for `len` payload bytes; returns its size. */
static size_t
queue_header(char *hdr, Py_ssize_t len)
{
    if ((long long)len < FRAME_SMALL_MAX) {
        uint32_t n = (uint32_t)len;
        hdr[0] = (char)(n >> 24); hdr[1] = (char)(n >> 16);
        hdr[2] = (char)(n >> 8); hdr[3] = (char)n;
        return 4;
    }
    uint64_t n = (uint64_t)len;
    memset(hdr, 0xff, 4);
    for (int i = 0; i < 8; i++)
        hdr[4 + i] = (char)(n >> (56 - 8 * i));
    return 12;
}

/* Waits (GIL released) until `fd` is ready for `events` or `deadline`.
 * Returns 1 ready, 0 timed out, -1 with an exception set. */
static int
queue_poll(int fd, short events, int64_t deadline)
{
    struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
    int res, err;
    for (;;) {
        int ms = mp_deadline_remaining_ms(deadline);
        Py_BEGIN_ALLOW_THREADS
        res = poll(&pfd, 1, ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (res > 0)
            return 1;
        if (res == 0)
            return 0;
        if (err != EINTR) {
            mp_set_oserror(err);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* Called on EINTR mid-frame: runs the signal handlers once, keeping the
 * first exception aside in *pending (a new reference) to raise later. */
static void
queue_defer_signals(PyObject **pending)
{
    if (*pending == NULL && PyErr_CheckSignals() < 0) {
#if PY_VERSION_HEX >= 0x030C0000
        *pending = PyErr_GetRaisedException();
#else
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (tb != NULL)
            PyException_SetTraceback(v, tb);
        Py_XDECREF(t);
        Py_XDECREF(tb);
        *pending = v;
#endif
    }
}

static void
queue_restore(PyObject *pending)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(pending);
#else
    PyErr_SetObject((PyObject *)Py_TYPE(pending), pending);
    Py_DECREF(pending);
#endif
}

/* Reads exactly `len` bytes into `buf` (GIL released while blocked).
 * `started` says whether part of the frame is already consumed: only
 * before that may a signal handler's exception abort the read.
 * Returns 0, or -1 with an exception set (EOFError at end of file). */
static int
queue_read_exact(int fd, char *buf, size_t len, int started, PyObject **pending)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = read(fd, buf + got, len - got);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n > 0) {
            got += (size_t)n;
            started = 1;
            continue;
        }
        if (n == 0) {
            PyErr_SetString(PyExc_EOFError, "queue pipe closed mid-frame");
            if (!started)
                PyErr_SetNone(PyExc_EOFError);
            return -1;
        }
        if (err == EINTR) {
            if (!started) {
                if (PyErr_CheckSignals() < 0)
                    return -1;
            }
            else {
                queue_defer_signals(pending);
            }
            continue;
        }
        mp_set_oserror(err);
        return -1;
    }
    return 0;
}

/* Payloads up to this size are read into the caller's stack buffer. */
#define QUEUE_SMALL 1024

/* Takes the next frame off the pipe `fd`, holding the SemLock `rlock`
 * while reading and releasing the SemLock `sem` (or None) after.  The
 * payload goes into small[0..QUEUE_SMALL) if it fits, else into a new
 * bytes object *big.  Returns 1 with *len set, 0 if `deadline` passed
 * first, or -1 with an exception set. */
static int
queue_take(int fd, PyObject *rlock, PyObject *sem, int64_t deadline,
           char *small, PyObject **big, size_t *len)
{
    PyObject *pending = NULL;
    int r, result = -1;

    *big = NULL;
    r = mp_semlock_acquire_until(rlock, deadline);
    if (r <= 0)
        return r;

    /* Wait for data while nothing is consumed: a timeout or Ctrl-C here
     * leaves the pipe as it was.  With no deadline the header's read
     * itself waits (one syscall less; a signal there consumes nothing). */
    r = deadline == MP_FOREVER ? 1 : queue_poll(fd, POLLIN, deadline);
    if (r <= 0) {
        result = r;
        goto done;
    }

    /* The header and a small payload are read in one GIL release; what
     * that leaves undone (a short read, EINTR, a large frame) is
     * finished below.  n2 == -2: the payload read was not tried. */
    unsigned char hdr[8];
    ssize_t n1, n2 = -2;
    int err;
    uint64_t size = 0;
    Py_BEGIN_ALLOW_THREADS
    n1 = read(fd, hdr, 4);
    err = errno;
    if (n1 == 4) {
        size = ((uint64_t)hdr[0] << 24) | ((uint64_t)hdr[1] << 16) |
               ((uint64_t)hdr[2] << 8) | (uint64_t)hdr[3];
        if (size <= QUEUE_SMALL) {
            n2 = size ? read(fd, small, (size_t)size) : 0;
            err = errno;
        }
    }
    Py_END_ALLOW_THREADS
    if (n1 < 4) {
        if (n1 < 0) {
            if (err != EINTR) {
                mp_set_oserror(err);
                goto done;
            }
            /* Nothing consumed yet: a handler's exception may end it. */
            if (PyErr_CheckSignals() < 0)
                goto done;
            n1 = 0;
        }
        else if (n1 == 0) {
            PyErr_SetNone(PyExc_EOFError);
            goto done;
        }
        if (queue_read_exact(fd, (char *)hdr + n1, (size_t)(4 - n1), n1 > 0,
                             &pending) < 0)
            goto done;
        size = ((uint64_t)hdr[0] << 24) | ((uint64_t)hdr[1] << 16) |
               ((uint64_t)hdr[2] << 8) | (uint64_t)hdr[3];
    }
    if (size & 0x80000000u) {
        if (size != 0xffffffffu) {
            PyErr_SetString(PyExc_OSError, "corrupt frame header on queue pipe");
            goto done;
        }
        /* -1: the 8-byte length follows. */
        if (queue_read_exact(fd, (char *)hdr, 8, 1, &pending) < 0)
            goto done;
        size = 0;
        for (int i = 0; i < 8; i++)
            size = (size << 8) | hdr[i];
        if (size > (uint64_t)PY_SSIZE_T_MAX) {
            PyErr_SetString(PyExc_OverflowError, "queue frame too large");
            goto done;
        }
    }
    char *dest = small;
    size_t have = 0;
    if (n2 >= 0) {
        have = (size_t)n2;
    }
    else if (n2 == -1 && err == EINTR) {
        queue_defer_signals(&pending);
    }
    else if (n2 == -1) {
        mp_set_oserror(err);
        goto done;
    }
    else if (size > QUEUE_SMALL) {
        /* The bytes object is ours alone until returned: reading into
         * its buffer with the GIL released touches no shared Python
         * state. */
        *big = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (*big == NULL)
            goto done;
        dest = PyBytes_AS_STRING(*big);
    }
    if (have < size &&
            queue_read_exact(fd, dest + have, (size_t)size - have, 1, &pending) < 0)
        goto done;
    *len = (size_t)size;
    result = 1;
    if (sem != Py_None && mp_semlock_release(sem) < 0)
        result = -1;

done:
    if (mp_semlock_release(rlock) < 0)
        result = -1;
    if (pending != NULL) {
        /* The frame was read whole; the interrupted caller loses it, but
         * every later reader still finds frame boundaries intact. */
        if (PyErr_Occurred())
            Py_DECREF(pending);
        else
            queue_restore(pending);
        result = -1;
    }
    if (result != 1)
        Py_CLEAR(*big);
    return result;
}

/* Parses the arguments queue_recv and queue_get share. */
static int
queue_take_args(mp_state *st, PyObject *const *args, int *fd,
                int64_t *deadline)
{
    *fd = PyObject_AsFileDescriptor(args[0]);
    if (*fd < 0)
        return -1;
    if (mp_semlock_check(args[1], st) < 0)
        return -1;
    if (args[2] != Py_None && mp_semlock_check(args[2], st) < 0)
        return -1;
    return mp_deadline_from_timeout(args[3], deadline);
}

PyDoc_STRVAR(queue_recv__doc__,
"queue_recv(fd, rlock, sem, timeout, /)\n--\n\n"
"Take the next frame's payload from the pipe `fd` as bytes, holding the\n"
"SemLock `rlock` while reading and releasing the SemLock `sem` (or None)\n"
"after.  Returns None if `timeout` (None: no limit) expires first.");

static PyObject *
queue_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t deadline;
    int fd;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "queue_recv() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (queue_take_args(mp_get_state(module), args, &fd, &deadline) < 0)
        return NULL;
    char small[QUEUE_SMALL];
    PyObject *big;
    size_t len;
    int r = queue_take(fd, args[1], args[2], deadline, small, &big, &len);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    if (big != NULL)
        return big;
    return PyBytes_FromStringAndSize(small, (Py_ssize_t)len);
}

PyDoc_STRVAR(queue_get__doc__,
"queue_get(fd, rlock, sem, timeout, empty, /)\n--\n\n"
"Like queue_recv(), but return the object the frame holds, unpickled\n"
"once `rlock` is released, and raise the exception class `empty` if\n"
"`timeout` expires first.");

static PyObject *
queue_get(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    mp_state *st = mp_get_state(module);
    int64_t deadline;
    int fd;

    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "queue_get() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    if (queue_take_args(st, args, &fd, &deadline) < 0)
        return NULL;
    char small[QUEUE_SMALL];
    PyObject *big;
    size_t len;
    int r = queue_take(fd, args[1], args[2], deadline, small, &big, &len);
    if (r < 0)
        return NULL;
    if (r == 0) {
        PyErr_SetNone(args[4] == Py_None ? PyExc_TimeoutError : args[4]);
        return NULL;
    }
    if (big == NULL)
        return mp_pickle_loads(st, small, len, NULL);
    PyObject *obj = mp_pickle_loads(st, PyBytes_AS_STRING(big), len, big);
    Py_DECREF(big);
    return obj;
}

/* Writes all of iov (GIL released while blocked; waits for room when the
 * fd is non-blocking).  `written` bytes are already out.  Signals are
 * deferred once a byte has gone.  Returns 0 or -1 with an exception. */
static int
queue_write_all(int fd, struct iovec *iov, int iovcnt, size_t written,
                PyObject **pending)
{
    for (;;) {
        while (iovcnt > 0 && written >= iov[0].iov_len) {
            written -= iov[0].iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt == 0)
            return 0;
        iov[0].iov_base = (char *)iov[0].iov_base + written;
        iov[0].iov_len -= written;
        written = 0;
        ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = writev(fd, iov, iovcnt);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            written = (size_t)n;
            continue;
        }
        if (err == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT, .revents = 0};
            Py_BEGIN_ALLOW_THREADS
            (void)poll(&pfd, 1, -1);
            Py_END_ALLOW_THREADS
            continue;
        }
        if (err == EINTR) {
            queue_defer_signals(pending);
            continue;
        }
        mp_set_oserror(err);
        return -1;
    }
}

PyDoc_STRVAR(queue_send__doc__,
"queue_send(fd, wlock, data, block, /)\n--\n\n"
"Write `data` (bytes-like) to the pipe `fd` as one frame while holding the\n"
"SemLock `wlock`.  With `block` true, wait for the lock and for room and\n"
"return the frame's size.  Otherwise make one non-blocking attempt and\n"
"return None if the whole frame went out, -1 if the lock was busy, 0 if\n"
"the pipe was full (the lock released in all three cases), or the number\n"
"of bytes of a partial write, in which case `wlock` stays held for the\n"
"caller to finish the frame and release it.");

static PyObject *
queue_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    mp_state *st = mp_get_state(module);
    PyObject *wlock, *pending = NULL, *result = NULL;
    Py_buffer view;
    char hdr[12];
    int fd, block, r;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "queue_send() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    wlock = args[1];
    if (mp_semlock_check(wlock, st) < 0)
        return NULL;
    block = PyObject_IsTrue(args[3]);
    if (block < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0)
        return NULL;

    size_t hlen = queue_header(hdr, view.len);
    size_t total = hlen + (size_t)view.len;
    struct iovec iov[2] = {
        {.iov_base = hdr, .iov_len = hlen},
        {.iov_base = view.buf, .iov_len = (size_t)view.len},
    };

    r = mp_semlock_acquire_until(wlock, block ? MP_FOREVER : mp_now_ns());
    if (r < 0)
        goto done;
    if (r == 0) {
        result = PyLong_FromLong(-1);
        goto done;
    }
    if (block) {
        if (queue_write_all(fd, iov, 2, 0, &pending) == 0)
            result = PyLong_FromSize_t(total);
        if (mp_semlock_release(wlock) < 0)
            Py_CLEAR(result);
        goto done;
    }

    /* One attempt on the (non-blocking) fd: a pipe with room takes the
     * frame at once; a full one takes part of it or nothing.  It never
     * blocks, so the GIL stays held (a round trip of it costs more than
     * the write). */
    ssize_t n;
    int err, async_err = 0;
    do {
        n = writev(fd, iov, 2);     /* cpylint-ignore: never blocks */
        err = errno;
    } while (n < 0 && err == EINTR && !(async_err = PyErr_CheckSignals()));
    if (n < 0 && !async_err && (err == EAGAIN || err == EWOULDBLOCK))
        n = 0;
    if (n < 0) {
        if (!async_err)
            mp_set_oserror(err);
        (void)mp_semlock_release(wlock);
        goto done;
    }
    if ((size_t)n == total || n == 0) {
        if (mp_semlock_release(wlock) < 0)
            goto done;
    }
    if ((size_t)n == total) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    else {
        result = PyLong_FromSsize_t(n);
    }

done:
    PyBuffer_Release(&view);
    if (pending != NULL) {
        /* The frame went out whole; now the deferred exception. */
        Py_CLEAR(result);
        if (PyErr_Occurred())
            Py_DECREF(pending);
        else
            queue_restore(pending);
    }
    return result;
}

static PyMethodDef queue_functions[] = {
    {"queue_recv", (PyCFunction)(void (*)(void))queue_recv, METH_FASTCALL,
     queue_recv__doc__},
    {"queue_send", (PyCFunction)(void (*)(void))queue_send, METH_FASTCALL,
     queue_send__doc__},
    {"queue_get", (PyCFunction)(void (*)(void))queue_get, METH_FASTCALL,
     queue_get__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_queue_init(PyObject *module, mp_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, queue_functions);
}
