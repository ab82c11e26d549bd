/* Passing file descriptors over an AF_UNIX stream socket (SCM_RIGHTS).
 *
 * Wire format, shared with the stdlib's reduction.sendfds/recvfds so the
 * two interoperate: one data byte holding the fd count modulo 256, with
 * the fds in a single SCM_RIGHTS control message.
 */
#include "mpcore.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The kernel's limit on fds in one SCM_RIGHTS message (SCM_MAX_FD). */
#define FDPASS_MAX 253

typedef union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * FDPASS_MAX)];
} fdpass_cmsgbuf;

PyDoc_STRVAR(sendfds__doc__,
"sendfds(sock, fds, /)\n--\n\n"
"Send the file descriptors in the sequence `fds` (1 to 253 of them) over\n"
"the AF_UNIX stream socket `sock` (an fd or an object with fileno()).");

static PyObject *
fdpass_sendfds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    fdpass_cmsgbuf cbuf;
    int fds[FDPASS_MAX];

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "sendfds() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int sock = PyObject_AsFileDescriptor(args[0]);
    if (sock < 0)
        return NULL;
    PyObject *seq = PySequence_Tuple(args[1]);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n < 1 || n > FDPASS_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "sendfds() sends 1 to %d file descriptors, not %zd",
                     FDPASS_MAX, n);
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyTuple_GET_ITEM(seq, i));
        if (fd == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        if (fd < 0 || fd > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "bad file descriptor: %ld", fd);
            Py_DECREF(seq);
            return NULL;
        }
        fds[i] = (int)fd;
    }
    Py_DECREF(seq);

    unsigned char count = (unsigned char)(n % 256);
    struct iovec iov = {.iov_base = &count, .iov_len = 1};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    memset(&cbuf, 0, sizeof(cbuf));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n);

    ssize_t r;
    int err, async_err;
    MP_RETRY_EINTR(r, sendmsg(sock, &msg, MSG_NOSIGNAL), err, async_err);
    if (r < 0)
        return async_err ? NULL : mp_set_oserror(err);
    Py_RETURN_NONE;
}

static void
fdpass_close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

PyDoc_STRVAR(recvfds__doc__,
"recvfds(sock, n, /)\n--\n\n"
"Receive `n` file descriptors (close-on-exec) sent by sendfds() over the\n"
"AF_UNIX stream socket `sock` and return them as a list.  Raises\n"
"EOFError if the peer closed, RuntimeError if what arrived is not\n"
"exactly `n` descriptors (any that did arrive are closed).");

static PyObject *
fdpass_recvfds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    fdpass_cmsgbuf cbuf;
    int fds[FDPASS_MAX];
    int nfds = 0;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "recvfds() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int sock = PyObject_AsFileDescriptor(args[0]);
    if (sock < 0)
        return NULL;
    Py_ssize_t want = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (want == -1 && PyErr_Occurred())
        return NULL;
    if (want < 1 || want > FDPASS_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "recvfds() receives 1 to %d file descriptors, not %zd",
                     FDPASS_MAX, want);
        return NULL;
    }

    unsigned char count = 0;
    struct iovec iov = {.iov_base = &count, .iov_len = 1};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)want);

    ssize_t r;
    int err, async_err;
    MP_RETRY_EINTR(r, recvmsg(sock, &msg, MSG_CMSG_CLOEXEC), err, async_err);
    if (r < 0)
        return async_err ? NULL : mp_set_oserror(err);

    /* Collect whatever arrived first, so that every error path below can
     * close it: nothing received may leak. */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL;
         cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t j = 0; j < k; j++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + j * sizeof(int), sizeof(int));
            if (nfds < FDPASS_MAX)
                fds[nfds++] = fd;
            else
                close(fd);
        }
    }
    if (r == 0 && nfds == 0) {
        PyErr_SetString(PyExc_EOFError,
                        "connection closed while waiting for file descriptors");
        return NULL;
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        fdpass_close_all(fds, nfds);
        PyErr_Format(PyExc_RuntimeError,
                     "file descriptor message truncated: more than %zd "
                     "descriptors were sent", want);
        return NULL;
    }
    if (nfds == 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "received data without file descriptors");
        return NULL;
    }
    if (nfds != want || r != 1 || count != (unsigned char)(nfds % 256)) {
        fdpass_close_all(fds, nfds);
        PyErr_Format(PyExc_RuntimeError,
                     "expected %zd file descriptors, received %d (count byte %d)",
                     want, nfds, (int)count);
        return NULL;
    }
    PyObject *res = PyList_New(nfds);
    if (res == NULL) {
        fdpass_close_all(fds, nfds);
        return NULL;
    }
    for (int i = 0; i < nfds; i++) {
        PyObject *v = PyLong_FromLong(fds[i]);
        if (v == NULL) {
            /* The list owns the ints made so far; close every fd. */
            fdpass_close_all(fds, nfds);
            Py_DECREF(res);
            return NULL;
        }
        PyList_SET_ITEM(res, i, v);
    }
    return res;
}

static PyMethodDef fdpass_methods[] = {
    {"sendfds", (PyCFunction)(void (*)(void))fdpass_sendfds, METH_FASTCALL,
     sendfds__doc__},
    {"recvfds", (PyCFunction)(void (*)(void))fdpass_recvfds, METH_FASTCALL,
     recvfds__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_fdpass_init(PyObject *module, mp_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, fdpass_methods);
}
