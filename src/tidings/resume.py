"""Whether a subscription can resume from ``since``: one pure decision over seq positions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resume:
    recovered: bool | None  # None: the client did not ask to resume
    cursor: int  # the seq the client is considered to have seen; replay what follows


def decide(since: int | None, oldest: int, latest: int) -> Resume:
    """Decide how to start a subscription.

    ``oldest`` is the oldest seq the log still holds (``latest + 1`` when it holds none),
    ``latest`` the project's newest seq. Recovery is possible when every event after
    ``since`` is still in the log. A ``since`` beyond ``latest`` cannot come from this
    server's history (a restored database, another deployment): the client must refetch.
    """
    if since is None:
        return Resume(recovered=None, cursor=latest)
    if since > latest or since + 1 < oldest:
        return Resume(recovered=False, cursor=latest)
    return Resume(recovered=True, cursor=since)
