-- A feature model with duplicate (customer_id, event_ts): its unique-keys test must fail the build.
-- Tagged expect_failure: the default selector (selectors.yml) leaves it out; the package tests run
-- `dbt build --select tag:expect_failure` and expect a non-zero exit and the colliding keys in the output.
select
    customer_id,
    event_date as event_ts,
    spend_1d
from {{ ref('duplicate_card_events') }}
