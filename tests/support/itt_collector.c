/*
 * A minimal ITT (Intel Instrumentation and Tracing Technology) collector for tests.
 *
 * Why: torch.profiler.itt and torch.autograd.profiler.emit_itt call the static part of
 * libittnotify built into libtorch. Without a collector those calls are no-ops, so a test
 * cannot tell whether a range was emitted. VTune loads its collector from the path in
 * INTEL_LIBITTNOTIFY64; this library stands in for it and appends one line per event to
 * the file named by ITT_COLLECTOR_LOG:
 *
 *     begin <task name>
 *     end
 *     error <message>          (the collector could not hook into the static part)
 *
 * Optional ITT_COLLECTOR_DOMAIN keeps only the events of that domain (PyTorch uses
 * "PyTorch"; oneDNN emits its own tasks).
 *
 * Contract with the static part (ittapi, ittnotify_static.c): it dlopen()s the library,
 * and when it exports __itt_api_init it calls __itt_api_init(global, groups) once. The
 * global holds api_list_ptr, a table of {name, func_ptr, init_func, null_func, group}
 * ending in a NULL name; the collector points each *func_ptr it implements at its own
 * function. The handles it returns must keep the public layouts of __itt_domain (flags
 * first: callers skip a domain whose flags are 0) and __itt_string_handle, since handles
 * created by the static part before initialisation reach the same functions.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* Public ABI layouts (ittnotify.h / ittnotify_config.h), declared here under our names. */
struct domain_handle {
    volatile int flags;
    const char *name_a;
    void *name_w;
    int extra1;
    void *extra2;
    struct domain_handle *next;
};

struct string_handle {
    const char *str_a;
    void *str_w;
    int extra1;
    void *extra2;
    struct string_handle *next;
};

struct itt_id {
    unsigned long long d1, d2, d3;
};

struct api_entry {
    const char *name;
    void **func_ptr;
    void *init_func;
    void *null_func;
    int group;
};

static int log_fd = -1;
static const char *domain_filter;
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct domain_handle *domains;
static struct string_handle *strings;

static void log_line(const char *kind, const char *text)
{
    char line[4096];
    int n;

    if (log_fd < 0)
        return;
    n = snprintf(line, sizeof(line), text ? "%s %s\n" : "%s\n", kind, text);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line)) {
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    /* One write() per line on an O_APPEND descriptor keeps lines whole across threads. */
    if (write(log_fd, line, (size_t)n) < 0)
        return;
}

static int domain_wanted(const struct domain_handle *domain)
{
    if (domain_filter == NULL)
        return 1;
    return domain != NULL && domain->name_a != NULL && strcmp(domain->name_a, domain_filter) == 0;
}

EXPORT struct domain_handle *__itt_domain_create(const char *name)
{
    struct domain_handle *d;

    if (name == NULL)
        return NULL;
    pthread_mutex_lock(&handles_lock);
    for (d = domains; d != NULL; d = d->next)
        if (strcmp(d->name_a, name) == 0)
            break;
    if (d == NULL && (d = calloc(1, sizeof(*d))) != NULL) {
        d->flags = 1;
        d->name_a = strdup(name);
        d->next = domains;
        domains = d;
    }
    pthread_mutex_unlock(&handles_lock);
    return d;
}

EXPORT struct string_handle *__itt_string_handle_create(const char *name)
{
    struct string_handle *s;

    if (name == NULL)
        return NULL;
    pthread_mutex_lock(&handles_lock);
    for (s = strings; s != NULL; s = s->next)
        if (strcmp(s->str_a, name) == 0)
            break;
    if (s == NULL && (s = calloc(1, sizeof(*s))) != NULL) {
        s->str_a = strdup(name);
        s->next = strings;
        strings = s;
    }
    pthread_mutex_unlock(&handles_lock);
    return s;
}

EXPORT void __itt_task_begin(const struct domain_handle *domain, struct itt_id id,
                             struct itt_id parent, struct string_handle *name)
{
    (void)id;
    (void)parent;
    if (domain_wanted(domain))
        log_line("begin", name != NULL && name->str_a != NULL ? name->str_a : "?");
}

EXPORT void __itt_task_end(const struct domain_handle *domain)
{
    if (domain_wanted(domain))
        log_line("end", NULL);
}

/*
 * Find the static part's api_list_ptr without hard-coding the __itt_global layout, which
 * changed between ittapi releases (int vs long counters, mutex size). The static part
 * stores our dlopen() handle in `lib`, followed by error_handler, dll_path_ptr and
 * api_list_ptr, so the table is three pointers after the slot holding our handle.
 */
static struct api_entry *find_api_list(void *global)
{
    Dl_info info;
    void *self;
    void **slots = global;
    struct api_entry *list;
    int i;

    if (!dladdr((void *)&find_api_list, &info) || info.dli_fname == NULL)
        return NULL;
    self = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (self == NULL)
        return NULL;
    dlclose(self); /* drop the reference NOLOAD added; the static part holds its own */
    for (i = 0; i < 24; i++) {
        if (slots[i] != self)
            continue;
        list = slots[i + 3];
        if (list != NULL && list[0].name != NULL && strncmp(list[0].name, "__itt_", 6) == 0)
            return list;
        return NULL;
    }
    return NULL;
}

EXPORT void __itt_api_init(void *global, int init_groups)
{
    static const struct {
        const char *name;
        void *func;
    } provided[] = {
        {"__itt_domain_create", (void *)&__itt_domain_create},
        {"__itt_string_handle_create", (void *)&__itt_string_handle_create},
        {"__itt_task_begin", (void *)&__itt_task_begin},
        {"__itt_task_end", (void *)&__itt_task_end},
    };
    const char *path = getenv("ITT_COLLECTOR_LOG");
    struct api_entry *list;
    size_t k;
    int i;

    (void)init_groups;
    domain_filter = getenv("ITT_COLLECTOR_DOMAIN");
    if (path != NULL && log_fd < 0)
        log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

    list = find_api_list(global);
    if (list == NULL) {
        log_line("error", "api_list_ptr not found in the ITT static part");
        return;
    }
    for (i = 0; list[i].name != NULL; i++) {
        void *func = list[i].null_func;

        for (k = 0; k < sizeof(provided) / sizeof(provided[0]); k++)
            if (strcmp(list[i].name, provided[k].name) == 0)
                func = provided[k].func;
        *list[i].func_ptr = func;
    }
}
