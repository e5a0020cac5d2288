//! The site database's schema: one SQL step per version (see the store's documentation).

/// The schema, one step per version: `MIGRATIONS[i]` takes a database from version `i` to
/// `i + 1`. Steps are never edited once released; changes come as new steps.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sites (
    code        TEXT PRIMARY KEY CHECK (length(code) = 3),
    parent      TEXT REFERENCES sites(code),
    is_self     INTEGER NOT NULL DEFAULT 0 CHECK (is_self IN (0, 1))
);
CREATE UNIQUE INDEX one_self_site ON sites(is_self) WHERE is_self = 1;

CREATE TABLE dps (
    name        TEXT PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES sites(code),
    kind        TEXT NOT NULL CHECK (kind IN ('standard', 'pull')),
    address     TEXT NOT NULL,
    key_site    TEXT NOT NULL,
    throttle    TEXT NOT NULL DEFAULT 'daily unlimited',
    created     INTEGER NOT NULL
);

CREATE TABLE dp_groups (
    name        TEXT PRIMARY KEY
);
CREATE TABLE dp_group_members (
    grp         TEXT NOT NULL REFERENCES dp_groups(name) ON DELETE CASCADE,
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    PRIMARY KEY (grp, dp)
);

CREATE TABLE packages (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    priority    TEXT NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high')),
    sender      TEXT NOT NULL DEFAULT 'any' CHECK (sender IN ('any', 'standard', 'courier')),
    delta       INTEGER NOT NULL DEFAULT 1 CHECK (delta IN (0, 1)),
    created     INTEGER NOT NULL
);
CREATE TABLE package_versions (
    package         TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    version         INTEGER NOT NULL CHECK (version > 0),
    manifest_hash   BLOB NOT NULL CHECK (length(manifest_hash) = 32),
    created         INTEGER NOT NULL,
    PRIMARY KEY (package, version)
);

CREATE TABLE package_targets (
    package     TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    action      TEXT NOT NULL CHECK (action IN ('install', 'redistribute', 'remove', 'validate', 'none')),
    version     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (package, dp)
);

CREATE TABLE distribution_jobs (
    id              INTEGER PRIMARY KEY,
    package         TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    dp              TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    action          TEXT NOT NULL CHECK (action IN ('install', 'redistribute', 'remove', 'validate')),
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'retrying', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt    INTEGER NOT NULL,
    error           TEXT,
    created         INTEGER NOT NULL,
    updated         INTEGER NOT NULL
);
-- One live job per (package, dp): a second request updates it instead of duplicating it.
CREATE UNIQUE INDEX one_live_job ON distribution_jobs(package, dp)
    WHERE state IN ('queued', 'running', 'retrying');
CREATE INDEX jobs_due ON distribution_jobs(state, next_attempt);

CREATE TABLE package_dp_status (
    package     TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    state       TEXT NOT NULL CHECK (state IN ('install_pending', 'retrying', 'installed',
                    'failed', 'removal_pending', 'removed')),
    version     INTEGER,
    last_copied INTEGER,
    message     TEXT,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (package, dp)
);

CREATE TABLE status_messages (
    id          INTEGER PRIMARY KEY,
    message_id  INTEGER NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    component   TEXT NOT NULL,
    site        TEXT NOT NULL,
    time        INTEGER NOT NULL,
    package     TEXT,
    dp          TEXT,
    version     INTEGER,
    strings     TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX messages_by_package ON status_messages(package, id);
"#,
    r#"
CREATE TABLE dp_sources (
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    source      TEXT NOT NULL REFERENCES dps(name),
    rank        INTEGER NOT NULL,
    PRIMARY KEY (dp, source)
);
ALTER TABLE dps ADD COLUMN http TEXT;
ALTER TABLE dps ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE packages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE package_versions ADD COLUMN files INTEGER NOT NULL DEFAULT 0;
ALTER TABLE package_versions ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE distribution_jobs ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE package_dp_status ADD COLUMN last_validated INTEGER;
"#,
    r#"
-- DistMgr's package threads: a package is processing from the planning of its jobs (2300)
-- until none is live and its result is reported (2301/2302).
ALTER TABLE packages ADD COLUMN processing INTEGER NOT NULL DEFAULT 0;
-- A deleted package's copy in the site's own library is dropped by DistMgr, durably queued.
ALTER TABLE packages ADD COLUMN purged INTEGER NOT NULL DEFAULT 0;
-- Package IDs handed out for a snapshot still running: an ID is never reused, and a
-- package row appears only together with its first version.
CREATE TABLE package_ids (
    id          TEXT PRIMARY KEY,
    reserved    INTEGER NOT NULL
);
-- Rows a killed `package create` left without a version were never visible; mark them
-- deleted so their IDs stay taken and nothing lists them.
UPDATE packages SET deleted = 1, purged = 1
    WHERE NOT EXISTS (SELECT 1 FROM package_versions v WHERE v.package = packages.id);
"#,
    r#"
-- The hierarchy (issue 13, item 1). A site row is this site (is_self), its parent (the row
-- this site's `parent` names) or a child (a row whose `parent` is this site). Parent and
-- children carry the Ed25519 key they were configured with: the authorization table grants
-- a peer the parent or child role only for exactly that key.
ALTER TABLE sites ADD COLUMN key BLOB CHECK (key IS NULL OR length(key) = 32);
ALTER TABLE sites ADD COLUMN added INTEGER;
-- A site's own row never names itself as its parent.
CREATE TRIGGER sites_no_self_parent BEFORE UPDATE OF parent ON sites
    WHEN NEW.parent = NEW.code
    BEGIN SELECT RAISE(ABORT, 'a site cannot be its own parent'); END;
-- Addresses: how this site sends to a child (one per sender kind). Retry and concurrency
-- settings left NULL follow the site's defaults in freightd.toml (SPEC §6). A child with
-- addresses cannot be removed (no cascade: the schedules are the administrator's work, and
-- the Sender's queued requests will name the address).
CREATE TABLE addresses (
    site            TEXT NOT NULL REFERENCES sites(code),
    kind            TEXT NOT NULL CHECK (kind IN ('standard', 'courier')),
    endpoint        TEXT,
    throttle        TEXT NOT NULL DEFAULT 'daily unlimited',
    retries         INTEGER CHECK (retries IS NULL OR retries BETWEEN 0 AND 1000),
    retry_delay_ms  INTEGER CHECK (retry_delay_ms IS NULL OR retry_delay_ms > 0),
    max_sends       INTEGER CHECK (max_sends IS NULL OR max_sends BETWEEN 1 AND 1000),
    created         INTEGER NOT NULL,
    PRIMARY KEY (site, kind),
    -- A network sender needs the child's QUIC endpoint; a courier has none.
    CHECK ((kind = 'standard') = (endpoint IS NOT NULL))
);
"#,
    r#"
-- Across sites (issue 13). Packages another site sent keep their origin; `NULL` = made here.
ALTER TABLE packages ADD COLUMN origin TEXT;
-- The parent's QUIC endpoint, where this site reports status.
ALTER TABLE sites ADD COLUMN address TEXT;
-- DistMgr's inbox for sites below this one: the package's newest version is to reach `site`
-- (a child, or a site below one) and be installed on every DP there.
CREATE TABLE site_targets (
    package     TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    site        TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('install', 'remove', 'none')),
    version     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (package, site)
);
-- The Sender's outbox: one mini-job to one child (the next hop), with its signed instruction,
-- the final sites it is for, and its state. Times in unix ms.
CREATE TABLE send_requests (
    id              INTEGER PRIMARY KEY,
    package         TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    base_version    INTEGER,
    dest            TEXT NOT NULL REFERENCES sites(code),
    sites           TEXT NOT NULL,
    priority        TEXT NOT NULL CHECK (priority IN ('low', 'medium', 'high')),
    instruction     BLOB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'sending', 'retrying', 'sent', 'failed',
                                     'pending', 'confirmed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt    INTEGER NOT NULL,
    error           TEXT,
    bytes_sent      INTEGER NOT NULL DEFAULT 0,
    created         INTEGER NOT NULL,
    updated         INTEGER NOT NULL
);
CREATE UNIQUE INDEX one_live_send ON send_requests(package, dest)
    WHERE state IN ('queued', 'sending', 'retrying');
-- A courier request is `pending` once its parcel is written and `confirmed` when the child
-- reports it received the parcel.
-- What this site received by courier and has not yet reported to its parent.
CREATE TABLE courier_received (
    package     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    reported    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (package, version)
);
-- Sites below this site's children, as their reports name them: `via` is the child of this
-- site on the way.
CREATE TABLE remote_sites (
    code        TEXT PRIMARY KEY,
    parent      TEXT NOT NULL,
    via         TEXT NOT NULL,
    updated     INTEGER NOT NULL
);
-- Package status on DPs of sites below, as their reports give it.
CREATE TABLE remote_status (
    package     TEXT NOT NULL,
    site        TEXT NOT NULL,
    dp          TEXT NOT NULL,
    state       TEXT NOT NULL,
    version     INTEGER,
    message     TEXT,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (package, site, dp)
);
-- What this site reports to its parent: every change of a package's status on a DP here or
-- below, in order, logged only while the site has a parent (setting one logs every current
-- row). The reporter sends rows past the parent's acknowledged sequence number and deletes
-- acknowledged ones.
CREATE TABLE status_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    package     TEXT NOT NULL,
    site        TEXT NOT NULL,
    dp          TEXT NOT NULL,
    state       TEXT NOT NULL,
    version     INTEGER,
    message     TEXT
);
-- Only a DP's newest state matters to the parent: a change supersedes the unreported ones
-- before it, so the log holds at most one row per (package, site, DP) however long the
-- parent is away.
CREATE INDEX status_log_by_dp ON status_log(package, site, dp);
CREATE TRIGGER status_log_latest_only AFTER INSERT ON status_log
    BEGIN DELETE FROM status_log WHERE package = NEW.package AND site = NEW.site
        AND dp = NEW.dp AND seq < NEW.seq; END;
CREATE TABLE report_cursor (
    one         INTEGER PRIMARY KEY CHECK (one = 1),
    acked       INTEGER NOT NULL
);
INSERT INTO report_cursor VALUES (1, 0);
CREATE TRIGGER log_dp_status_insert AFTER INSERT ON package_dp_status
    BEGIN INSERT INTO status_log (package, site, dp, state, version, message)
        SELECT NEW.package, code, NEW.dp, NEW.state, NEW.version, NEW.message
        FROM sites WHERE is_self = 1 AND parent IS NOT NULL; END;
CREATE TRIGGER log_dp_status_update AFTER UPDATE ON package_dp_status
    BEGIN INSERT INTO status_log (package, site, dp, state, version, message)
        SELECT NEW.package, code, NEW.dp, NEW.state, NEW.version, NEW.message
        FROM sites WHERE is_self = 1 AND parent IS NOT NULL; END;
CREATE TRIGGER log_remote_status_insert AFTER INSERT ON remote_status
    BEGIN INSERT INTO status_log (package, site, dp, state, version, message)
        SELECT NEW.package, NEW.site, NEW.dp, NEW.state, NEW.version, NEW.message
        FROM sites WHERE is_self = 1 AND parent IS NOT NULL; END;
CREATE TRIGGER log_remote_status_update AFTER UPDATE ON remote_status
    BEGIN INSERT INTO status_log (package, site, dp, state, version, message)
        SELECT NEW.package, NEW.site, NEW.dp, NEW.state, NEW.version, NEW.message
        FROM sites WHERE is_self = 1 AND parent IS NOT NULL; END;
"#,
];
