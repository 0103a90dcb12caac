"""rblx-open-cloud 2.3.0 (PyPI), unchanged, against datastorer's Open
Cloud-compatible API. Its HTTP session is the module's `http_session`; a
requests adapter mounted on it sends `https://apis.roblox.com/...` to the
server under test instead (the only adaptation: the host). Run by
tests/open_cloud.rs with DATASTORER_URL, DATASTORER_KEY, DATASTORER_ADMIN_KEY
and DATASTORER_HELD_KEY (a key a game server's session holds) set.
Prints one line per check and exits non-zero on the first failure."""

import datetime
import os
import sys
import time

import requests
import rblxopencloud
from rblxopencloud import Experience, HttpException, NotFound, PreconditionFailed, Conflict

BASE = os.environ["DATASTORER_URL"].rstrip("/")
KEY = os.environ["DATASTORER_KEY"]
HELD = os.environ["DATASTORER_HELD_KEY"]


class Redirect(requests.adapters.HTTPAdapter):
    """Sends Roblox's host to the server under test."""

    def send(self, request, **kwargs):
        request.url = request.url.replace("https://apis.roblox.com", BASE, 1)
        return super().send(request, **kwargs)


rblxopencloud.http_session.mount("https://apis.roblox.com/", Redirect())

checks = 0


def check(what, condition, detail=""):
    global checks
    if not condition:
        print(f"FAIL - {what} {detail}")
        sys.exit(1)
    checks += 1
    print(f"ok - {what}")


experience = Experience(4242, KEY)
store = experience.get_datastore("PlayerData")

# get and set, with user ids and metadata
first = store.set_entry("Player_1", {"Coins": 5}, users=[1, 2], metadata={"Tier": "gold"})
value, info = store.get_entry("Player_1")
check("set then get answers the value", value == {"Coins": 5}, value)
check("user ids and metadata come back", info.users == [1, 2] and info.metadata == {"Tier": "gold"}, vars(info))
check("the version is the one the set answered", info.version == first.version, (info.version, first.version))
check("times are dates", isinstance(info.created, datetime.datetime) and info.updated >= info.created)

# matchVersion: a compare-and-set
second = store.set_entry("Player_1", {"Coins": 6}, previous_version=first.version)
check("a set on the current version succeeds", second.version != first.version)
try:
    store.set_entry("Player_1", {"Coins": 7}, previous_version=first.version)
    check("a stale matchVersion is refused", False)
except PreconditionFailed as e:
    check("a stale matchVersion is refused with the current value", e.value == {"Coins": 6}, e.value)
    check("... and the current version", e.info.version == second.version, e.info.version)
check("nothing written by the refused set", store.get_entry("Player_1")[0] == {"Coins": 6})

# omitted user ids and metadata are cleared, as Roblox does
store.set_entry("Player_1", {"Coins": 6})
_, info = store.get_entry("Player_1")
check("omitted user ids and metadata are cleared", info.users == [] and info.metadata == {}, vars(info))

# exclusiveCreate
try:
    store.set_entry("Player_1", {"Coins": 0}, exclusive_create=True)
    check("exclusiveCreate on an existing entry is refused", False)
except PreconditionFailed as e:
    check("exclusiveCreate on an existing entry is refused with its value", e.value == {"Coins": 6}, e.value)
check("the existing value is kept", store.get_entry("Player_1")[0] == {"Coins": 6})
# The client creates through v2 first, then sets through v1 with
# exclusiveCreate (which then fails on the entry it just made); the entry
# exists either way, as against Roblox.
try:
    store.set_entry("Fresh", {"New": True}, exclusive_create=True)
except PreconditionFailed:
    pass
check("exclusiveCreate makes a new entry", store.get_entry("Fresh")[0] == {"New": True})

# increment
value, info = store.increment_entry("Counter", 5, users=[9])
check("increment of a missing entry starts at 0", value == 5, value)
value, info = store.increment_entry("Counter", -2)
check("increment adds", value == 3, value)
try:
    store.increment_entry("Player_1", 1)
    check("increment of a non-number is refused", False)
except HttpException as e:
    check("increment of a non-number is refused", e.status_code == 400, e.status_code)

# delete
store.remove_entry("Counter")
try:
    store.get_entry("Counter")
    check("a deleted entry is gone", False)
except NotFound:
    check("a deleted entry is gone", True)

# list keys with paging (more than one page of 256)
for i in range(300):
    store.set_entry(f"list-{i:03d}", i)
keys = [k.key for k in store.list_keys(prefix="list-")]
check("list keys pages through all of them", keys == [f"list-{i:03d}" for i in range(300)], len(keys))
check("listed keys carry their scope", all(k.scope == "global" for k in store.list_keys(prefix="list-0", limit=5)))

# versions: every acknowledged write that changed something is one (the
# third set above repeated the second: no version)
versions = list(store.list_versions("Player_1"))
check("each set that changed the entry is a version", len(versions) == 2, [v.version for v in versions])
check("versions come newest first", versions[0].created >= versions[-1].created)
old_value, old_info = store.get_version("Player_1", first.version)
check("an old version reads back", old_value == {"Coins": 5} and old_info.users == [1, 2], old_value)
at_value, _ = store.get_version("Player_1", datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1))
check("the version at a time (@latest:<time>)", at_value == {"Coins": 6}, at_value)
try:
    store.get_version("Player_1", "not-a-version")
    check("a bad version id is NotFound", False)
except NotFound:
    check("a bad version id is NotFound (the client reads the message)", True)
limited = list(store.list_versions("Player_1", limit=2))
check("a version listing honours its limit", len(limited) == 2)
after = list(store.list_versions("Player_1", after=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)))
check("a time filter on versions", after == [], after)

# list data stores
experience.get_datastore("Other Store").set_entry("k", 1)
names = [d.name for d in experience.list_datastores()]
check("list data stores", "PlayerData" in names and "Other Store" in names, names)

# scopes are data stores of their own
scoped = experience.get_datastore("PlayerData", scope="beta")
scoped.set_entry("Player_1", "beta value")
check("a scope is separate", scoped.get_entry("Player_1")[0] == "beta value")
check("... from the global scope", store.get_entry("Player_1")[0] == {"Coins": 6})

# beyond Roblox: a key a game server's session holds is not written behind it
try:
    store.set_entry(HELD, {"Coins": 999})
    check("a write to a held key is refused", False)
except Conflict as e:
    check("a write to a held key is refused (409)", e.status_code == 409, e.status_code)
try:
    store.remove_entry(HELD)
    check("a delete of a held key is refused", False)
except Conflict:
    check("a delete of a held key is refused (409)", True)

# authentication
bad = Experience(4242, "not-a-valid-key-0000").get_datastore("PlayerData")
try:
    bad.get_entry("Player_1")
    check("a bad API key is refused", False)
except HttpException as e:
    check("a bad API key is refused (401)", e.status_code == 401, e.status_code)

print(f"rblx-open-cloud 2.3.0 against datastorer: {checks} checks passed")
