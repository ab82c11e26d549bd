/* The fork server's loop: accept a request, fork, report the pid, and
 * later report the child's exit status.
 *
 * The server is a fresh interpreter that has preloaded modules and then
 * calls forkserver_serve().  Every request comes over a private AF_UNIX
 * stream socket and carries a fixed header plus the child's file
 * descriptors (SCM_RIGHTS).  For each complete request the server forks;
 * the child returns from forkserver_serve() into Python with the list of
 * received fds, the server writes the child's pid to the client socket and
 * keeps the socket until the child ends, then writes its exit code (the
 * negative signal number if a signal killed it) and closes it.  So for the
 * client the socket is the child's sentinel.
 *
 * The loop's blocking part (poll, accept, recvmsg, waitpid, send) runs with
 * the GIL released and touches no Python object; only fork() and building
 * the child's result run with the GIL held.  Clients are non-blocking and
 * kept in a bounded table, so a client that stalls, disconnects mid-request
 * or sends garbage is dropped without holding up the others.  Children are
 * reaped on SIGCHLD, which a C handler turns into a byte on a self-pipe
 * (write() is async-signal-safe).  The server returns None once the alive
 * pipe from the parent program reaches EOF: no server outlives its program.
 */
#include "mpcore.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Wire format of a request: magic, the number of fds attached, and the
 * server's secret token (a second lock behind the 0700 directory). */
#define FS_MAGIC 0x5346504dU        /* "MPFS" little-endian */
#define FS_TOKEN_LEN 32
#define FS_MAXFDS 256               /* fds per request, as the stdlib's */
#define FS_MAX_PENDING 128          /* clients whose request is incomplete */
#define FS_REQ_LEN (8 + FS_TOKEN_LEN)

/* A client whose request is still arriving. */
typedef struct {
    int fd;
    size_t got;
    int nfds;
    int bad;
    unsigned char buf[FS_REQ_LEN];
    int fds[FS_MAXFDS];
} fs_client;

/* A running child and the client socket that gets its exit status. */
typedef struct {
    pid_t pid;
    int fd;
} fs_child;

typedef struct {
    int listener;
    int alive;
    int sig_r, sig_w;
    int backoff;                    /* accept() ran out of fds: pause it */
    unsigned char token[FS_TOKEN_LEN];
    fs_client *pending[FS_MAX_PENDING];
    int npending;
    fs_child *children;
    size_t nchildren, cap;
    struct pollfd *pfds;            /* 3 + FS_MAX_PENDING entries */
    struct sigaction old_chld;
    int handler_set;
} fs_server;

enum { STEP_FORK, STEP_EXIT, STEP_EINTR, STEP_ERROR };

/* The self-pipe's write end, for the signal handler. */
static volatile sig_atomic_t fs_sigchld_fd = -1;

static void
fs_on_sigchld(int signo)
{
    (void)signo;
    int saved = errno;
    int fd = fs_sigchld_fd;
    if (fd >= 0) {
        /* A full pipe already holds a wake-up: EAGAIN is fine. */
        ssize_t r = write(fd, "c", 1);
        (void)r;
    }
    errno = saved;
}

/* ------------------------------------------------------------ clients */

static void
client_free(fs_client *c)
{
    for (int i = 0; i < c->nfds; i++)
        close(c->fds[i]);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

/* Removes pending[i] from the table (keeping arrival order), returns it. */
static fs_client *
pending_take(fs_server *s, int i)
{
    fs_client *c = s->pending[i];
    memmove(&s->pending[i], &s->pending[i + 1],
            (size_t)(s->npending - i - 1) * sizeof(fs_client *));
    s->npending--;
    return c;
}

static int
token_equal(const unsigned char *a, const unsigned char *b)
{
    /* Constant time: a mismatch position must not show in the timing. */
    unsigned char diff = 0;
    for (int i = 0; i < FS_TOKEN_LEN; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

enum { RECV_MORE, RECV_DONE, RECV_DROP };

/* Reads what the client has sent so far (never blocks).  Called with the
 * GIL released. */
static int
client_recv(fs_server *s, fs_client *c)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * FS_MAXFDS)];
    } cbuf;
    struct iovec iov = {c->buf + c->got, FS_REQ_LEN - c->got};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = sizeof(cbuf.buf);

    ssize_t n;
    do {
        n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? RECV_MORE : RECV_DROP;

    /* Take ownership of every fd that arrived, even from a bad request,
     * so that client_free() closes them. */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(cm);
        for (size_t j = 0; j < k; j++) {
            int fd;
            memcpy(&fd, data + j * sizeof(int), sizeof(int));
            if (c->nfds < FS_MAXFDS)
                c->fds[c->nfds++] = fd;
            else {
                close(fd);
                c->bad = 1;
            }
        }
    }
    if (msg.msg_flags & MSG_CTRUNC)
        c->bad = 1;
    if (n == 0 || c->bad)
        return RECV_DROP;           /* gone mid-request, or too many fds */
    c->got += (size_t)n;
    if (c->got < FS_REQ_LEN)
        return RECV_MORE;

    uint32_t magic, nfds;
    memcpy(&magic, c->buf, 4);
    memcpy(&nfds, c->buf + 4, 4);
    if (magic != FS_MAGIC || nfds < 1 || nfds != (uint32_t)c->nfds ||
            !token_equal(c->buf + 8, s->token))
        return RECV_DROP;
    return RECV_DONE;
}

/* ----------------------------------------------------------- children */

static int
send_int64(int fd, int64_t value)
{
    ssize_t n;
    do {
        n = send(fd, &value, sizeof(value), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(value) ? 0 : -1;
}

/* Reaps every child that has ended and reports its exit code.  Called with
 * the GIL released. */
static void
reap_children(fs_server *s)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return;
        int64_t code;
        if (WIFEXITED(status))
            code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status))
            code = -(int64_t)WTERMSIG(status);
        else
            continue;
        for (size_t i = 0; i < s->nchildren; i++) {
            if (s->children[i].pid != pid)
                continue;
            /* The client may be gone already; nothing to do then. */
            (void)send_int64(s->children[i].fd, code);
            close(s->children[i].fd);
            s->children[i] = s->children[--s->nchildren];
            break;
        }
    }
}

static int
children_add(fs_server *s, pid_t pid, int fd)
{
    if (s->nchildren == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        fs_child *p = realloc(s->children, cap * sizeof(fs_child));
        if (p == NULL)
            return -1;
        s->children = p;
        s->cap = cap;
    }
    s->children[s->nchildren].pid = pid;
    s->children[s->nchildren].fd = fd;
    s->nchildren++;
    return 0;
}

/* -------------------------------------------------------------- loop */

/* Adds a newly accepted client, making room by dropping the oldest
 * pending one if the table is full.  Returns its index. */
static int
pending_add(fs_server *s, int fd)
{
    fs_client *c = malloc(sizeof(fs_client));
    if (c == NULL) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->got = 0;
    c->nfds = 0;
    c->bad = 0;
    if (s->npending == FS_MAX_PENDING)
        client_free(pending_take(s, 0));
    s->pending[s->npending] = c;
    return s->npending++;
}

/* Waits for and handles events until a complete request is ready
 * (STEP_FORK, its client is s->pending[*ready]), the parent program is
 * gone (STEP_EXIT), a signal interrupted the wait (STEP_EINTR) or a
 * system call failed (STEP_ERROR, errno in *err).  Called with the GIL
 * released. */
static int
server_step(fs_server *s, int *ready, int *err)
{
    for (;;) {
        int n = 0;
        s->pfds[n++] = (struct pollfd){s->alive, POLLIN, 0};
        s->pfds[n++] = (struct pollfd){s->sig_r, POLLIN, 0};
        int with_listener = !s->backoff;
        if (with_listener)
            s->pfds[n++] = (struct pollfd){s->listener, POLLIN, 0};
        int first_client = n;
        for (int i = 0; i < s->npending; i++)
            s->pfds[n++] = (struct pollfd){s->pending[i]->fd, POLLIN, 0};

        int r = poll(s->pfds, (nfds_t)n, s->backoff ? 100 : -1);
        if (r < 0) {
            if (errno == EINTR)
                return STEP_EINTR;
            *err = errno;
            return STEP_ERROR;
        }
        s->backoff = 0;
        if (r == 0)
            continue;

        if (s->pfds[1].revents) {
            char drain[64];
            while (read(s->sig_r, drain, sizeof(drain)) > 0)
                ;
            reap_children(s);
        }
        if (s->pfds[0].revents) {
            char byte;
            ssize_t got = read(s->alive, &byte, 1);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
                return STEP_EXIT;
        }
        /* Clients from the last one down, so that dropping one does not
         * shift the entries still to visit. */
        for (int i = s->npending - 1; i >= 0; i--) {
            if (!s->pfds[first_client + i].revents)
                continue;
            int st = client_recv(s, s->pending[i]);
            if (st == RECV_DONE) {
                *ready = i;
                return STEP_FORK;
            }
            if (st == RECV_DROP)
                client_free(pending_take(s, i));
        }
        if (with_listener && s->pfds[2].revents) {
            int fd = accept4(s->listener, NULL, NULL,
                             SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) {
                if (errno == EMFILE || errno == ENFILE ||
                        errno == ENOBUFS || errno == ENOMEM)
                    s->backoff = 1;
                else if (errno != EAGAIN && errno != EWOULDBLOCK &&
                         errno != EINTR && errno != ECONNABORTED &&
                         errno != EPROTO) {
                    *err = errno;
                    return STEP_ERROR;
                }
                continue;
            }
            /* The request usually arrives with the connection: try now
             * rather than after another poll. */
            int i = pending_add(s, fd);
            if (i < 0)
                continue;
            int st = client_recv(s, s->pending[i]);
            if (st == RECV_DONE) {
                *ready = i;
                return STEP_FORK;
            }
            if (st == RECV_DROP)
                client_free(pending_take(s, i));
        }
    }
}

/* Frees everything the server owns except the listener and alive fds. */
static void
server_release(fs_server *s)
{
    if (s->handler_set) {
        sigaction(SIGCHLD, &s->old_chld, NULL);
        s->handler_set = 0;
    }
    fs_sigchld_fd = -1;
    while (s->npending > 0)
        client_free(pending_take(s, s->npending - 1));
    for (size_t i = 0; i < s->nchildren; i++)
        close(s->children[i].fd);
    free(s->children);
    s->children = NULL;
    s->nchildren = s->cap = 0;
    free(s->pfds);
    s->pfds = NULL;
    if (s->sig_r >= 0)
        close(s->sig_r);
    if (s->sig_w >= 0)
        close(s->sig_w);
    s->sig_r = s->sig_w = -1;
}

/* Forks for client `c` (already out of the pending table).  In the child,
 * returns a new list of the received fds (the child owns them); in the
 * server returns NULL with no exception set after reporting the pid, or
 * NULL with an exception set if building the child's list failed. */
static PyObject *
server_fork(fs_server *s, fs_client *c)
{
    PyOS_BeforeFork();
    pid_t pid = fork();
    int fork_errno = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
        /* The child keeps only the fds of its own request. */
        int nfds = c->nfds;
        c->nfds = 0;
        close(s->listener);
        close(s->alive);
        server_release(s);
        PyObject *fds = PyList_New(nfds);
        for (int i = 0; fds != NULL && i < nfds; i++) {
            PyObject *v = PyLong_FromLong(c->fds[i]);
            if (v == NULL)
                Py_CLEAR(fds);
            else
                PyList_SET_ITEM(fds, i, v);
        }
        if (fds == NULL)
            c->nfds = nfds;     /* nobody will use them: close them */
        client_free(c);
        return fds;
    }
    PyOS_AfterFork_Parent();

    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < c->nfds; i++)
        close(c->fds[i]);
    c->nfds = 0;
    if (pid < 0) {
        /* A negative "pid" tells the client the errno of the failure. */
        (void)send_int64(c->fd, -(int64_t)fork_errno);
    }
    else {
        (void)send_int64(c->fd, (int64_t)pid);
        if (children_add(s, pid, c->fd) == 0)
            c->fd = -1;     /* now owned by the children table */
    }
    /* Without a table entry the client sees EOF when the child ends. */
    client_free(c);
    Py_END_ALLOW_THREADS
    return NULL;
}

PyDoc_STRVAR(forkserver_serve__doc__,
"forkserver_serve(listener_fd, alive_fd, token, /)\n--\n\n"
"Serve fork requests on the listening AF_UNIX socket `listener_fd` until\n"
"the pipe `alive_fd` reaches EOF; then return None.  A request must carry\n"
"the bytes `token`.  In each forked child this call returns the list of\n"
"file descriptors the request carried (the child owns them; the\n"
"listener and alive fds are closed there).  Installs a SIGCHLD handler\n"
"for as long as it runs.");

static PyObject *
forkserver_serve(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "forkserver_serve() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    long listener = PyLong_AsLong(args[0]);
    if (listener == -1 && PyErr_Occurred())
        return NULL;
    long alive = PyLong_AsLong(args[1]);
    if (alive == -1 && PyErr_Occurred())
        return NULL;
    if (listener < 0 || alive < 0 || listener > INT32_MAX || alive > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "file descriptors must be >= 0");
        return NULL;
    }
    Py_buffer token;
    if (PyObject_GetBuffer(args[2], &token, PyBUF_SIMPLE) < 0)
        return NULL;
    if (token.len != FS_TOKEN_LEN) {
        PyBuffer_Release(&token);
        PyErr_Format(PyExc_ValueError, "token must be %d bytes", FS_TOKEN_LEN);
        return NULL;
    }
    if (fs_sigchld_fd >= 0) {
        PyBuffer_Release(&token);
        PyErr_SetString(PyExc_RuntimeError, "a fork server is already serving");
        return NULL;
    }

    fs_server *s = PyMem_Calloc(1, sizeof(fs_server));
    if (s == NULL) {
        PyBuffer_Release(&token);
        return PyErr_NoMemory();
    }
    memcpy(s->token, token.buf, FS_TOKEN_LEN);
    PyBuffer_Release(&token);
    s->listener = (int)listener;
    s->alive = (int)alive;
    s->sig_r = s->sig_w = -1;

    PyObject *result = NULL;
    /* On the heap rather than in fs_server: GCC's poll() access check
     * misreads an array member of a struct as its first field. */
    s->pfds = malloc(sizeof(struct pollfd) * (3 + FS_MAX_PENDING));
    if (s->pfds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
        mp_set_oserror(errno);
        goto done;
    }
    s->sig_r = pipefd[0];
    s->sig_w = pipefd[1];
    fs_sigchld_fd = s->sig_w;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fs_on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, &s->old_chld) < 0) {
        mp_set_oserror(errno);
        goto done;
    }
    s->handler_set = 1;
    /* Children that ended before the handler existed. */
    Py_BEGIN_ALLOW_THREADS
    reap_children(s);
    Py_END_ALLOW_THREADS

    for (;;) {
        int step, ready = -1, err = 0;
        Py_BEGIN_ALLOW_THREADS
        step = server_step(s, &ready, &err);
        Py_END_ALLOW_THREADS
        if (step == STEP_EINTR) {
            if (PyErr_CheckSignals() < 0)
                goto done;
            continue;
        }
        if (step == STEP_EXIT) {
            Py_INCREF(Py_None);
            result = Py_None;
            goto done;
        }
        if (step == STEP_ERROR) {
            mp_set_oserror(err);
            goto done;
        }
        fs_client *c = pending_take(s, ready);
        result = server_fork(s, c);
        if (result != NULL) {
            /* The child: everything of the server is released already. */
            PyMem_Free(s);
            return result;
        }
        if (PyErr_Occurred())
            goto done;
    }

done:
    server_release(s);
    PyMem_Free(s);
    return result;
}

static PyMethodDef forkserver_methods[] = {
    {"forkserver_serve", (PyCFunction)(void (*)(void))forkserver_serve,
     METH_FASTCALL, forkserver_serve__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_forkserver_init(PyObject *module, mp_state *st)
{
    (void)st;
    if (PyModule_AddFunctions(module, forkserver_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "FORKSERVER_MAGIC", (long)FS_MAGIC) < 0 ||
            PyModule_AddIntConstant(module, "FORKSERVER_TOKEN_LEN", FS_TOKEN_LEN) < 0 ||
            PyModule_AddIntConstant(module, "FORKSERVER_MAXFDS", FS_MAXFDS) < 0)
        return -1;
    return 0;
}
