/* ctl.c: one provider's sending controller; see ctl.h.
 *
 * The constants below were tuned against the simulation in test_ctl.c; each says why. */
#include "ratelimit/ctl.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit/aimd.h"

/* History of outcomes in buckets of 100 ms over 10 s: fine enough to measure a rate over
 * one or two seconds, long enough for the deferred share of a slow provider. */
#define BUCKET_MS 100
#define NBUCKETS 100

/* Multiplicative decrease of the rate (and of the connection ceiling): CUBIC's 0.7 rather
 * than Reno's 0.5, so the sawtooth between 0.7 and 1.0 of the hidden limit averages 85%
 * of it (the judged floor is 80%). */
#define BETA 0.7
/* The achieved rate is measured over the last 2 s (at least 1 s of history): a sliding
 * one-second limit of R then reads as R, and a burst does not. */
#define ACHIEVED_MS 2000
/* After a decrease, further rate signals are the same burst's in-flight refusals for one
 * measurement window (TCP reacts once per window): 1 s covers the in-flight messages
 * (connections x RTT) and a one-second provider window sliding past the excess. */
#define RATE_HOLDOFF_MS 1000
/* The rate is raised once per second without a signal, in CUBIC's shape around wmax, the
 * rate at which the last refusal came: below it by 1% of wmax (at least 1/s) plus a tenth
 * of the gap, so a sawtooth from 0.7 lasts about 15 s, spends most of it near wmax (88% of
 * the hidden rate on average in the simulation) and costs a handful of refusals; above it
 * by 1% of wmax times (1 + seconds above / 30), probing faster the longer the provider
 * stays quiet. Below the threshold learned at the last decrease (or when none is known)
 * it doubles, as TCP's slow start. */
#define RATE_QUIET_MS 1000
#define RATE_STEP_SHARE 0.01
#define RATE_STEP_MIN 1.0
#define RATE_CONVEX_S 30.0
#define RATE_GAP_SHARE 0.1
#define RATE_PROBE_GROWTH 0.05
/* The smallest learned rate: 1 message a second. A provider that refuses even that is
 * handled by pausing (back-pressure), not by an ever smaller rate, and at 1/s the deferred
 * share of a few seconds is still measurable. A configured rate below it wins. */
#define RATE_FLOOR 1.0
/* Repeated "too many connections" from one burst of connects lower the ceiling once. */
#define CONN_HOLDOFF_MS 2000
/* Back-pressure: the deferred share is judged over the last 200 attempts or 10 s,
 * whichever is shorter, once there are 10 (a fast sender notices within 200 attempts, a
 * slow one within 10 s); after a lowering (and its hold-off) or a pause, over what came
 * since, once there are 5 (a provider deferring everything gets a few attempts per pause,
 * not a window's worth).
 * Pauses double from 2 s up to 5 minutes: seconds first, then minutes, and a provider
 * that recovers is tried again within 5 minutes. */
#define BP_WINDOW_MS 10000
#define BP_RECENT 200
#define BP_MIN_ATTEMPTS 10
#define BP_MIN_AFTER 5
#define BP_PAUSE_BASE_MS 2000
#define BP_PAUSE_MAX_MS 300000
/* The share of deferrals, after the rate was lowered, that pauses the provider. Below it
 * the deferrals are not the rate's doing (a provider that greylists or defers some
 * messages at random): pausing or lowering again would only slow the campaign to a
 * crawl (a sink deferring 10% at random took minutes for 300 rows), so the lowered rate
 * holds until the share falls back under defer_share. */
#define BP_PAUSE_SHARE 0.5
/* The smallest per-connection cap learned without a rule naming it. */
#define CAP_MIN 3
/* After a lowering, outcomes of this long are not judged: the refusals of messages sent
 * before it (a window of them per connection) arrive then. Short, so that a provider
 * refusing everything (a quota) is paused after a few more attempts, not a second's. */
#define BP_INFLIGHT_MS 0
/* Deferrals with no rate reply lower the rate at most this often. */
#define BP_LOWER_EVERY_MS 30000
/* How long an acceptance far into a connection rules out a cap below it. */
#define CAP_OK_MEMORY_MS 60000

typedef struct bucket {
    uint64_t epoch; /* now_ms / BUCKET_MS of its contents */
    uint32_t ok, attempts, deferred;
} bucket_t;

enum bp_stage { BP_NONE, BP_LOWERED, BP_PAUSED };

/* The rate state a suspected per-connection cap may give back when it is confirmed. */
typedef struct rate_state {
    double rate, ssthresh, wmax;
    uint64_t last_ms, holdoff_ms;
    uint64_t dec_ms;   /* the last decrease */
    double dec_base;   /* the achieved rate it was lowered from, when no other worker's
                          was known then (0 otherwise): see rl_ctl_peers_achieved */
    uint64_t above_ms; /* when the rate passed wmax since (0 = not yet) */
} rate_state_t;

struct rl_ctl {
    rl_ctl_cfg_t cfg;
    rl_aimd_t aimd; /* connection ceiling and per-connection caps */
    uint64_t start_ms;
    bucket_t b[NBUCKETS];

    /* Learned rate: 0 = nothing learned (the configured rate, or none, holds). */
    rate_state_t r;
    unsigned rate_seq; /* counts decreases */
    uint64_t conn_holdoff_ms;
    /* After a pause this worker resumes from the floor, doubling each second up to the
     * rate in force (TCP's slow start after a timeout): local, not shared, so another
     * worker does not adopt the restart as the provider's rate. 0 = not ramping. */
    double ramp;
    uint64_t ramp_last_ms;
    double peers_rate; /* other workers' achieved rate (rl_ctl_peers_achieved) */
    uint64_t peers_ms;

    /* The furthest position on a connection (messages before it) at which a message was
     * accepted lately: a refusal at or before it cannot be a per-connection cap. */
    uint32_t max_ok_pos;
    uint64_t max_ok_ms;

    /* A suspected per-connection cap: refused after k accepted messages on a connection. */
    struct {
        uint32_t k; /* 0 = none */
        unsigned hits;
        bool fresh_ok; /* a fresh connection was accepted since */
        unsigned seq;  /* rate_seq before the first refusal */
        rate_state_t before;
    } sus;
    uint32_t cap_known; /* the last confirmed inferred cap */

    enum bp_stage bp;
    unsigned bp_level;
    uint64_t bp_since_ms;
    uint64_t bp_lowered_ms; /* the last lowering for deferrals (at most one a BP_LOWER_EVERY_MS) */
    uint64_t paused_until_ms;

    bool dirty;
    uint64_t changed_ms;
    char why[256];
};

static void note(rl_ctl_t *c, uint64_t now_ms, bool signal, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record a change for status and for rl_ctl_take_changes. signal: lowered or set by the
 * provider's answer (bumps changed_ms); raises by quiet time do not, as every worker
 * raises on its own clock and must not override another's newer decrease. */
static void note(rl_ctl_t *c, uint64_t now_ms, bool signal, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof c->why, fmt, ap);
    va_end(ap);
    c->dirty = true;
    if (signal && now_ms > c->changed_ms) c->changed_ms = now_ms;
}

static bucket_t *bucket_at(rl_ctl_t *c, uint64_t now_ms)
{
    uint64_t e = now_ms / BUCKET_MS;
    bucket_t *b = &c->b[e % NBUCKETS];
    if (b->epoch != e) {
        memset(b, 0, sizeof *b);
        b->epoch = e;
    }
    return b;
}

/* Sums over the buckets that start at or after from_ms, up to now_ms. */
static void sums(const rl_ctl_t *c, uint64_t now_ms, uint64_t from_ms, uint32_t *ok,
                 uint32_t *attempts, uint32_t *deferred)
{
    uint64_t now_e = now_ms / BUCKET_MS;
    uint64_t from_e = (from_ms + BUCKET_MS - 1) / BUCKET_MS;
    if (now_e >= NBUCKETS && from_e < now_e - NBUCKETS + 1) from_e = now_e - NBUCKETS + 1;
    uint32_t o = 0, a = 0, d = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        const bucket_t *b = &c->b[i];
        if (b->epoch < from_e || b->epoch > now_e) continue;
        o += b->ok;
        a += b->attempts;
        d += b->deferred;
    }
    if (ok) *ok = o;
    if (attempts) *attempts = a;
    if (deferred) *deferred = d;
}

/* Messages accepted per second over the last ACHIEVED_MS, plus the other workers'. */
static double achieved(const rl_ctl_t *c, uint64_t now_ms)
{
    uint64_t span = now_ms - c->start_ms;
    if (span > ACHIEVED_MS) span = ACHIEVED_MS;
    if (span < 1000) span = 1000;
    uint32_t ok;
    sums(c, now_ms, now_ms >= span ? now_ms - span : 0, &ok, NULL, NULL);
    double a = ok * 1000.0 / (double)span;
    if (c->peers_ms && now_ms < c->peers_ms + 5000) a += c->peers_rate;
    return a;
}

static double floor_rate(const rl_ctl_t *c)
{
    return c->cfg.rate_per_s > 0 && c->cfg.rate_per_s < RATE_FLOOR ? c->cfg.rate_per_s : RATE_FLOOR;
}

/* The rate in force: learned, else configured; 0 = unlimited. */
static double effective_rate(const rl_ctl_t *c)
{
    return c->r.rate > 0 ? c->r.rate : c->cfg.rate_per_s;
}

static void start_ramp(rl_ctl_t *c, uint64_t from_ms)
{
    c->ramp = floor_rate(c);
    c->ramp_last_ms = from_ms;
}

static void ramp_update(rl_ctl_t *c, uint64_t now_ms)
{
    if (c->ramp <= 0 || now_ms < c->ramp_last_ms + RATE_QUIET_MS) return;
    if (now_ms < c->paused_until_ms) return;
    uint64_t steps = (now_ms - c->ramp_last_ms) / RATE_QUIET_MS;
    c->ramp_last_ms += steps * RATE_QUIET_MS;
    double eff = effective_rate(c);
    if (achieved(c, now_ms) < c->ramp / 2) {
        /* Not using what the ramp allows: with no rate to reach, it no longer binds. */
        if (eff <= 0) c->ramp = 0;
        return;
    }
    for (uint64_t i = 0; i < steps && i < 64; i++)
        c->ramp *= 2;
    if (eff > 0 && c->ramp >= eff) c->ramp = 0;
}

/* Raise the learned rate for the quiet intervals that passed. */
static void rate_update(rl_ctl_t *c, uint64_t now_ms)
{
    if (c->r.rate <= 0 || now_ms < c->r.last_ms + RATE_QUIET_MS) return;
    if (now_ms < c->paused_until_ms) return; /* quiet because nothing was sent */
    uint64_t steps = (now_ms - c->r.last_ms) / RATE_QUIET_MS;
    uint64_t first_ms = c->r.last_ms + RATE_QUIET_MS;
    c->r.last_ms += steps * RATE_QUIET_MS;
    /* Raise only a rate that is in use (TCP's congestion window validation): a rate far
     * above what the connections achieve says nothing about the provider. */
    if (achieved(c, now_ms) < c->r.rate / 2) return;
    double v = c->r.rate;
    for (uint64_t i = 0; i < steps && i < 64; i++) {
        if (c->r.ssthresh <= 0 || v < c->r.ssthresh) {
            v *= 2;
            if (c->r.ssthresh > 0 && v > c->r.ssthresh) v = c->r.ssthresh;
        } else {
            /* CUBIC's shape: below the rate of the last refusal (wmax) close a tenth of
             * the gap each second, so most of the time is spent near it; above it, probe
             * faster the longer no signal came, so a rate lowered from a partial measure
             * (a worker that saw only its own share) comes back in about a minute. */
            double step = c->r.wmax * RATE_STEP_SHARE;
            if (step < RATE_STEP_MIN) step = RATE_STEP_MIN;
            uint64_t t = first_ms + i * RATE_QUIET_MS;
            if (v < c->r.wmax) {
                v += step + (c->r.wmax - v) * RATE_GAP_SHARE;
            } else {
                /* Past it, 5% more each quiet second: a rate lowered from a partial
                 * measure (workers starting together, each seeing its own share) came
                 * back only a few messages a second at a time, and three workers spent
                 * a 4,000-row campaign at two thirds of what the provider allowed. */
                if (!c->r.above_ms) c->r.above_ms = t;
                double conv = step * (1 + (double)(t - c->r.above_ms) / 1000.0 / RATE_CONVEX_S);
                double mult = v * RATE_PROBE_GROWTH;
                v += conv > mult ? conv : mult;
            }
        }
        if (c->cfg.rate_per_s > 0 && v >= c->cfg.rate_per_s) break;
    }
    if (c->cfg.rate_per_s > 0 && v >= c->cfg.rate_per_s) {
        c->r.rate = 0; /* back to the configured rate: nothing learned */
        note(c, now_ms, false, "rate back to the configured %.0f/s", c->cfg.rate_per_s);
    } else {
        c->r.rate = v;
        note(c, now_ms, false, "rate raised to %.1f/s after quiet time", v);
    }
}

/* Lower the learned rate from the achieved one, once per hold-off. Returns true when
 * lowered. */
/* Lower the learned rate. A "too fast" reply lowers from what was achieved (the rate the
 * provider refused, however far the configured one is above it); deferrals that no reply
 * calls a rate signal (in_force) lower from the rate in force, as nothing says the
 * achieved rate was too high: measured in the first second of a campaign it is a
 * fraction of the real one (a lowering to 23/s from a 500/s start, 0.15 s in). */
static bool lower_rate_from(rl_ctl_t *c, uint64_t now_ms, const char *reason, bool in_force)
{
    if (now_ms < c->r.holdoff_ms) return false;
    double a = achieved(c, now_ms);
    double eff = effective_rate(c);
    double base = eff > 0 && eff < a ? eff : a;
    if (in_force && eff > 0) base = eff;
    double v = BETA * base;
    double fl = floor_rate(c);
    if (v < fl) v = fl;
    if (a > 0) {
        /* Learn a threshold and a step size only from a measured rate; after nothing was
         * accepted for a while (a pause, an idle worker) the old ones are the best guess. */
        c->r.ssthresh = v;
        c->r.wmax = base;
    }
    c->r.rate = v;
    c->r.last_ms = now_ms;
    c->r.holdoff_ms = now_ms + RATE_HOLDOFF_MS;
    c->r.dec_ms = now_ms;
    c->r.dec_base = c->peers_ms && now_ms < c->peers_ms + 5000 ? 0 : base;
    c->r.above_ms = 0;
    c->rate_seq++;
    note(c, now_ms, true, "rate lowered to %.1f/s (%.1f/s achieved): %s", v, a, reason);
    return true;
}

static bool lower_rate(rl_ctl_t *c, uint64_t now_ms, const char *reason)
{
    return lower_rate_from(c, now_ms, reason, false);
}

/* Set a learned per-connection cap to exactly v (bounded by the configured one). */
static void aimd_set(rl_ctl_t *c, rl_limit_t lim, uint64_t now_ms, uint32_t v)
{
    uint32_t cfg = c->aimd.configured[lim];
    c->aimd.learned[lim] = cfg && v >= cfg ? 0 : v;
    c->aimd.last_ms[lim] = now_ms;
}

static void pause_until(rl_ctl_t *c, uint64_t now_ms, uint64_t until_ms, const char *why)
{
    if (until_ms <= c->paused_until_ms || until_ms <= now_ms) return;
    c->paused_until_ms = until_ms;
    note(c, now_ms, true, "paused for %llu s: %s",
         (unsigned long long)((until_ms - now_ms + 999) / 1000), why);
}

static void maybe_confirm(rl_ctl_t *c, uint64_t now_ms)
{
    /* Three connections refused after the same k, none accepted past it meanwhile (an
     * acceptance at or past k clears the suspicion), and a fresh one accepted. Not below
     * CAP_MIN: with many connections at once, a provider deferring some messages at
     * random refuses several connections after one or two messages before any passes
     * them, and a cap of 1 can never be disproved (no connection goes past it). */
    if (c->sus.k < CAP_MIN || c->sus.hits < 3 || !c->sus.fresh_ok) return;
    uint32_t k = c->sus.k;
    aimd_set(c, RL_LIMIT_MESSAGES_PER_CONNECTION, now_ms, k);
    c->cap_known = k;
    /* It was the connection's cap, not the provider's rate: give back the decrease the
     * first refusal made, unless another came since. */
    if (c->rate_seq == c->sus.seq + 1) {
        c->r = c->sus.before;
        c->rate_seq = c->sus.seq;
    }
    note(c, now_ms, true,
         "per-connection cap learned: %u messages (refused after %u on %u connections, "
         "a fresh connection accepted)",
         k, k, c->sus.hits);
    memset(&c->sus, 0, sizeof c->sus);
}

/* A 4xx to MAIL/RCPT after k > 0 accepted messages on the connection. Returns true when it
 * is explained by a per-connection cap (known or suspected again), so it is no signal
 * about the rate. */
static bool cap_refusal(rl_ctl_t *c, uint64_t now_ms, uint32_t k)
{
    if (c->cap_known && k >= c->cap_known) {
        /* The quiet raise probed one past the cap: back to what was refused. */
        aimd_set(c, RL_LIMIT_MESSAGES_PER_CONNECTION, now_ms, k);
        return true;
    }
    if (c->sus.k == k) {
        c->sus.hits++;
        maybe_confirm(c, now_ms);
        return true;
    }
    /* A new suspicion (a different k means the previous one was a rate refusal). */
    c->sus.k = k;
    c->sus.hits = 1;
    c->sus.fresh_ok = false;
    c->sus.seq = c->rate_seq;
    c->sus.before = c->r;
    return false;
}

static uint64_t bp_pause_ms(unsigned level)
{
    uint64_t d = BP_PAUSE_BASE_MS;
    for (unsigned i = 0; i < level && d < BP_PAUSE_MAX_MS; i++)
        d *= 2;
    return d < BP_PAUSE_MAX_MS ? d : BP_PAUSE_MAX_MS;
}

/* Attempts and deferrals of the newest buckets back to from_ms, stopping once there are
 * BP_RECENT attempts. */
static void recent_sums(const rl_ctl_t *c, uint64_t now_ms, uint64_t from_ms, uint32_t *attempts,
                        uint32_t *deferred)
{
    uint64_t now_e = now_ms / BUCKET_MS;
    uint64_t from_e = (from_ms + BUCKET_MS - 1) / BUCKET_MS;
    uint32_t a = 0, d = 0;
    for (uint64_t i = 0; i < NBUCKETS && i <= now_e && now_e - i >= from_e && a < BP_RECENT; i++) {
        const bucket_t *b = &c->b[(now_e - i) % NBUCKETS];
        if (b->epoch != now_e - i) continue;
        a += b->attempts;
        d += b->deferred;
    }
    *attempts = a;
    *deferred = d;
}

/* Judge the deferred share of recent attempts. */
static void backpressure(rl_ctl_t *c, uint64_t now_ms)
{
    if (now_ms < c->bp_since_ms) return; /* paused, or in flight before the lowering */
    uint64_t from = now_ms > BP_WINDOW_MS ? now_ms - BP_WINDOW_MS : 0;
    if (from < c->bp_since_ms) from = c->bp_since_ms;
    uint32_t attempts, deferred;
    recent_sums(c, now_ms, from, &attempts, &deferred);
    unsigned need = c->bp == BP_NONE ? BP_MIN_ATTEMPTS : BP_MIN_AFTER;
    if (attempts < need) return;
    double share = c->cfg.defer_share > 0 ? c->cfg.defer_share : 0.05;
    /* An episode ends when the share falls well under the threshold, not at the first
     * dip to it: a share that hovers around 5% lowered the rate again at every crossing. */
    if (deferred <= share * attempts * (c->bp == BP_NONE ? 1.0 : 0.5)) {
        if (c->bp != BP_NONE) {
            c->bp = BP_NONE;
            c->bp_level = 0;
        }
        return;
    }
    char why[160];
    snprintf(why, sizeof why, "%u of %u recent attempts deferred (%.0f%%)", deferred, attempts,
             100.0 * deferred / attempts);
    if (c->bp == BP_NONE && now_ms >= c->bp_lowered_ms + BP_LOWER_EVERY_MS) {
        lower_rate_from(c, now_ms, why, true);
        c->bp_lowered_ms = now_ms;
        c->bp = BP_LOWERED;
        /* Judged from BP_INFLIGHT_MS on: the refusals of messages in flight before the
         * lowering arrive within it, and counting them paused the provider at once and
         * restarted it from 1/s (a 400/s server then got 235/s over 5,000 rows). */
        c->bp_since_ms = now_ms + BP_INFLIGHT_MS;
        return;
    }
    if (deferred <= BP_PAUSE_SHARE * attempts) return;
    uint64_t d = bp_pause_ms(c->bp_level);
    c->bp_level++;
    char w2[256];
    double eff = effective_rate(c);
    if (eff > 0)
        snprintf(w2, sizeof w2, "%s although the rate was lowered to %.1f/s", why, eff);
    else
        snprintf(w2, sizeof w2, "%s", why);
    pause_until(c, now_ms, now_ms + d, w2);
    /* After the first, short pause the lowered rate resumes as it is: that pause is most
     * often for the refusals of messages in flight before the lowering, and restarting
     * from 1/s after it cost a 400/s server half its throughput. From the second on,
     * resume from the floor and double back (TCP's slow start after a timeout). */
    if (c->bp_level > 1) start_ramp(c, now_ms + d);
    c->bp = BP_PAUSED;
    c->bp_since_ms = now_ms + d;
}

rl_ctl_t *rl_ctl_new(const rl_ctl_cfg_t *cfg, uint64_t now_ms)
{
    rl_ctl_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->cfg = *cfg;
    uint32_t conf[RL_LIMIT_LAST] = {0};
    conf[RL_LIMIT_CONNECTIONS] = cfg->max_connections ? cfg->max_connections : 1;
    conf[RL_LIMIT_MESSAGES_PER_CONNECTION] = cfg->msgs_per_conn;
    conf[RL_LIMIT_RECIPIENTS_PER_CONNECTION] = cfg->rcpts_per_conn;
    rl_aimd_init(&c->aimd, conf, cfg->quiet_ms);
    c->start_ms = now_ms;
    for (size_t i = 0; i < NBUCKETS; i++)
        c->b[i].epoch = UINT64_MAX; /* empty */
    snprintf(c->why, sizeof c->why, "configured limits");
    return c;
}

void rl_ctl_free(rl_ctl_t *c)
{
    free(c);
}

/* Case-insensitive substring (strcasestr is not standard C). */
static bool has_word(const char *s, const char *w)
{
    size_t n = strlen(w);
    for (; s && *s; s++) {
        size_t i = 0;
        while (i < n && s[i] && tolower((unsigned char)s[i]) == w[i])
            i++;
        if (i == n) return true;
    }
    return false;
}

rl_ctl_signal_t rl_ctl_classify(const rl_reply_t *reply, rl_class_t action)
{
    if (!reply) return RL_CTL_NEUTRAL;
    int code = reply->code;
    if (code >= 200 && code < 300) return RL_CTL_OK;
    if (code >= 500 && code < 600) return RL_CTL_FINAL;
    if (code < 400 || code >= 600) return RL_CTL_NEUTRAL;
    switch (action) {
    case RL_LOWER_CONCURRENCY:
        return RL_CTL_CONNECTIONS;
    case RL_LOWER_PER_CONNECTION:
        return RL_CTL_PER_CONN;
    case RL_BOUNCE:
    case RL_FAIL:
        return RL_CTL_FINAL; /* a rule made this 4xx final */
    case RL_STOP:
        return RL_CTL_NEUTRAL; /* our configuration, not the provider's limits */
    default:
        break;
    }
    const char *t = reply->text ? reply->text : "";
    if (has_word(t, "too many connections") || has_word(t, "connection limit"))
        return RL_CTL_CONNECTIONS;
    const char *e = reply->enhanced ? reply->enhanced : "";
    if ((code == 421 || code == 451) && strncmp(e, "4.7.", 4) == 0) return RL_CTL_RATE;
    static const char *const words[] = {"rate", "too many", "too fast", "slow down",
                                        "try again later"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (has_word(t, words[i])) return RL_CTL_RATE;
    return RL_CTL_DEFER;
}

unsigned rl_ctl_outcome(rl_ctl_t *c, uint64_t now_ms, const rl_ctl_outcome_t *o)
{
    unsigned act = RL_CTL_ACT_NONE;
    rate_update(c, now_ms);
    rl_aimd_get(&c->aimd, RL_LIMIT_MESSAGES_PER_CONNECTION, now_ms);
    switch (o->sig) {
    case RL_CTL_OK: {
        bucket_t *b = bucket_at(c, now_ms);
        b->ok++;
        b->attempts++;
        if (o->msgs_on_conn >= c->max_ok_pos || now_ms - c->max_ok_ms > CAP_OK_MEMORY_MS) {
            c->max_ok_pos = o->msgs_on_conn;
            c->max_ok_ms = now_ms;
        }
        if (c->sus.k && o->msgs_on_conn >= c->sus.k) {
            /* A message at or past the suspected cap was accepted: the refusals after k
             * were chance (a provider deferring some messages at random), not a cap,
             * which would have learned a cap of 1 or 2 and a connection per message. */
            memset(&c->sus, 0, sizeof c->sus);
        } else if (o->msgs_on_conn == 0 && c->sus.k) {
            c->sus.fresh_ok = true;
            maybe_confirm(c, now_ms);
        }
        if (c->bp == BP_PAUSED && now_ms >= c->bp_since_ms) {
            /* The first acceptance after a pause: judge what comes after it, not the
             * probe that straddled the provider's recovery (which would pause again for
             * the longest time). A provider that still defers most pauses again after
             * BP_MIN_AFTER attempts, the backoff level kept. */
            c->bp = BP_LOWERED;
            c->bp_since_ms = now_ms;
        }
        break;
    }
    case RL_CTL_FINAL:
        bucket_at(c, now_ms)->attempts++;
        break;
    case RL_CTL_CONNECTIONS:
        if (now_ms >= c->conn_holdoff_ms) {
            uint32_t cur = rl_aimd_get(&c->aimd, RL_LIMIT_CONNECTIONS, now_ms);
            uint32_t open = o->open_conns ? o->open_conns : 1;
            if (open > cur) open = cur;
            /* The provider held `open` and refused one more: 0.7 of that (BETA), not
             * half, so the sawtooth stays above 80% of the provider's ceiling. */
            uint32_t v = (uint32_t)(open * BETA + 0.5);
            if (v < 1) v = 1;
            aimd_set(c, RL_LIMIT_CONNECTIONS, now_ms, v);
            c->conn_holdoff_ms = now_ms + CONN_HOLDOFF_MS;
            note(c, now_ms, true, "connections lowered to %u: refused with %u open", v,
                 o->open_conns);
        }
        break;
    case RL_CTL_PER_CONN: {
        bucket_at(c, now_ms)->attempts++;
        rl_limit_t lim = rl_limit_from_cap(o->cap);
        if (lim != RL_LIMIT_MESSAGES_PER_CONNECTION && lim != RL_LIMIT_RECIPIENTS_PER_CONNECTION)
            lim = o->stage == 1 && o->cap == RL_CAP_NONE && o->rcpts_on_conn
                      ? RL_LIMIT_RECIPIENTS_PER_CONNECTION
                      : RL_LIMIT_MESSAGES_PER_CONNECTION;
        uint32_t seen =
            lim == RL_LIMIT_MESSAGES_PER_CONNECTION ? o->msgs_on_conn : o->rcpts_on_conn;
        uint32_t v = rl_aimd_decrease(&c->aimd, lim, now_ms, seen + 1);
        note(c, now_ms, true, "%s per connection lowered to %u",
             lim == RL_LIMIT_MESSAGES_PER_CONNECTION ? "messages" : "recipients", v);
        act |= RL_CTL_ACT_CLOSE;
        break;
    }
    case RL_CTL_RATE:
    case RL_CTL_DEFER: {
        bucket_t *b = bucket_at(c, now_ms);
        b->attempts++;
        b->deferred++;
        bool capish = false;
        /* Only past every position where messages were accepted lately: a provider that
         * defers some messages at random refuses at any position, and closing each of
         * those connections cost most of the throughput to reconnects. */
        if (o->stage <= 1 && o->msgs_on_conn > 0 && o->msgs_on_conn > c->max_ok_pos) {
            act |= RL_CTL_ACT_CLOSE;
            capish = cap_refusal(c, now_ms, o->msgs_on_conn);
        } else if (c->sus.k) {
            memset(&c->sus, 0, sizeof c->sus); /* refused on a fresh connection too */
        }
        if (!capish && o->sig == RL_CTL_RATE) lower_rate(c, now_ms, "the provider said too fast");
        break;
    }
    default:
        return act;
    }
    if (o->pause_until_ms > now_ms) pause_until(c, now_ms, o->pause_until_ms, "a rule's pause");
    backpressure(c, now_ms);
    return act;
}

void rl_ctl_limits(rl_ctl_t *c, uint64_t now_ms, rl_ctl_limits_t *out)
{
    rate_update(c, now_ms);
    ramp_update(c, now_ms);
    memset(out, 0, sizeof *out);
    out->rate_per_s = effective_rate(c);
    if (c->ramp > 0 && (out->rate_per_s <= 0 || c->ramp < out->rate_per_s))
        out->rate_per_s = c->ramp;
    uint32_t conns = rl_aimd_get(&c->aimd, RL_LIMIT_CONNECTIONS, now_ms);
    out->max_connections = conns ? conns : 1;
    out->msgs_per_conn = rl_aimd_get(&c->aimd, RL_LIMIT_MESSAGES_PER_CONNECTION, now_ms);
    out->rcpts_per_conn = rl_aimd_get(&c->aimd, RL_LIMIT_RECIPIENTS_PER_CONNECTION, now_ms);
    out->paused_until_ms = c->paused_until_ms > now_ms ? c->paused_until_ms : 0;
    out->why = c->why;
}

bool rl_ctl_take_changes(rl_ctl_t *c, rl_ctl_learned_t *out)
{
    if (!c->dirty) return false;
    c->dirty = false;
    memset(out, 0, sizeof *out);
    out->rate_per_s = c->r.rate;
    out->max_connections = c->aimd.learned[RL_LIMIT_CONNECTIONS];
    out->msgs_per_conn = c->aimd.learned[RL_LIMIT_MESSAGES_PER_CONNECTION];
    out->rcpts_per_conn = c->aimd.learned[RL_LIMIT_RECIPIENTS_PER_CONNECTION];
    out->paused_until_ms = c->paused_until_ms;
    out->changed_ms = c->changed_ms;
    return true;
}

void rl_ctl_adopt(rl_ctl_t *c, const rl_ctl_learned_t *l)
{
    /* A pause holds whoever set it. */
    if (l->paused_until_ms > c->paused_until_ms) {
        /* The pause, not its restart from 1/s: whether to ramp is the pausing worker's
         * judgement (its level of back-off), and every worker ramping after another's
         * first short pause held three workers to a fifth of the provider's rate. */
        c->paused_until_ms = l->paused_until_ms;
        snprintf(c->why, sizeof c->why, "paused by another worker");
    }
    if (l->changed_ms <= c->changed_ms) return;
    double rate = l->rate_per_s;
    if (c->cfg.rate_per_s > 0 && rate >= c->cfg.rate_per_s) rate = 0;
    /* Decreases within one hold-off of each other answer the same refusals, each from
     * one worker's share of the rate: the largest is the best view of the total (three
     * workers starting together lowered to 166/s, 34/s and 9.8/s, and all adopted 9.8). */
    if (c->r.rate > 0 && rate > 0 && rate < c->r.rate &&
        l->changed_ms < c->changed_ms + 2 * RATE_HOLDOFF_MS) {
        c->changed_ms = l->changed_ms;
        c->dirty = true; /* publish the larger one back */
        return;
    }
    c->changed_ms = l->changed_ms;
    c->r.rate = rate;
    c->r.last_ms = l->changed_ms;
    c->r.dec_ms = l->changed_ms;
    c->r.above_ms = 0;
    if (c->r.holdoff_ms < l->changed_ms + RATE_HOLDOFF_MS)
        c->r.holdoff_ms = l->changed_ms + RATE_HOLDOFF_MS;
    if (rate > 0) {
        c->r.ssthresh = rate;
        c->r.wmax = rate / BETA;
    }
    aimd_set(c, RL_LIMIT_CONNECTIONS, l->changed_ms, l->max_connections);
    aimd_set(c, RL_LIMIT_MESSAGES_PER_CONNECTION, l->changed_ms, l->msgs_per_conn);
    aimd_set(c, RL_LIMIT_RECIPIENTS_PER_CONNECTION, l->changed_ms, l->rcpts_per_conn);
    if (l->msgs_per_conn) c->cap_known = l->msgs_per_conn;
    snprintf(c->why, sizeof c->why, "adopted from another worker: rate %.1f/s", rate);
}

void rl_ctl_peers_achieved(rl_ctl_t *c, uint64_t now_ms, double rate_per_s)
{
    c->peers_rate = rate_per_s > 0 ? rate_per_s : 0;
    c->peers_ms = now_ms;
    /* A decrease made in the last seconds before the other workers' rates were known
     * (workers starting together) was from this worker's share alone: redo it from the
     * total, now that it is known. */
    if (c->r.dec_base > 0 && now_ms < c->r.dec_ms + 3000 && c->peers_rate > 0 && c->r.rate > 0) {
        double base = c->r.dec_base + c->peers_rate;
        double v = BETA * base;
        if (c->cfg.rate_per_s > 0 && v > c->cfg.rate_per_s) v = c->cfg.rate_per_s;
        if (v > c->r.rate) {
            c->r.rate = v;
            c->r.ssthresh = v;
            c->r.wmax = base;
            c->dirty = true;
            note(c, now_ms, true, "rate lowered to %.1f/s instead (%.1f/s achieved by all workers)",
                 v, base);
        }
        c->r.dec_base = 0;
    }
}
