-- Checks that scripts run (start and /healthz): answers Redis's time.
return { 'ok', time_ms() }
