"""Outbound connectors' definitions: the validated models (webhook, mqtt, kafka; filter;
delivery knobs), the JSON document of an event and its filter, the sink interface and the
target policy. The sinks and the stage that run them are in
:mod:`fieldgate.cloud.pipeline.connectors`."""
