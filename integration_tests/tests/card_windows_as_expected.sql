-- card_windows equals expected_card_windows row for row (any row returned is a difference).
-- C0000001's 23:59:59 decline counts on 2026-01-01 only; its 00:00:00 attempt on 2026-01-02 is the next day's.
(
    select customer_id, event_ts, spend_1d, spend_7d, attempts_1d, attempts_7d from {{ ref('card_windows') }}
    except
    select customer_id, event_ts, spend_1d, spend_7d, attempts_1d, attempts_7d from {{ ref('expected_card_windows') }}
)
union all
(
    select customer_id, event_ts, spend_1d, spend_7d, attempts_1d, attempts_7d from {{ ref('expected_card_windows') }}
    except
    select customer_id, event_ts, spend_1d, spend_7d, attempts_1d, attempts_7d from {{ ref('card_windows') }}
)
