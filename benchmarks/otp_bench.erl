%% The Erlang/OTP side of benchmarks/vs_otp.py: the same scenarios on a real supervisor and gen_servers.
%% Compiled and run by the Python script (erlc, erl -noshell); prints one "name value unit" line per figure.
-module(otp_bench).
%% one module, two behaviours: init/1 tells them apart by its argument
-export([main/1, init/1, start_worker/1, handle_call/3, handle_cast/2]).

%% ---- the worker: a gen_server, registered, answering calls, crashing on request (raise, as on the Python side)
start_worker(undefined) -> gen_server:start_link(?MODULE, worker, []);
start_worker(Name) -> gen_server:start_link({local, Name}, ?MODULE, worker, []).

handle_call(X, _From, N) -> {reply, X, N}.

handle_cast(crash, _N) -> error(crash);
handle_cast({count, From, Target}, N) when N + 1 >= Target -> From ! {counted, N + 1}, {noreply, 0};
handle_cast(_, N) -> {noreply, N + 1}.

call(Dest, X) -> gen_server:call(Dest, X).

%% ---- init/1 of both: the supervisor's {Flags, Children}, the worker's `worker`
init(worker) -> {ok, 0};
init({Flags, Children}) -> {ok, {Flags, Children}}.

child(Id, Name) ->
    #{id => Id, start => {?MODULE, start_worker, [Name]}, restart => permanent, shutdown => brutal_kill,
      type => worker}.

start_sup(Intensity, Period, Children) ->
    {ok, Sup} = supervisor:start_link(?MODULE, {#{strategy => one_for_one, intensity => Intensity,
                                                   period => Period}, Children}),
    Sup.

stop_sup(Sup) ->
    unlink(Sup),
    Ref = monitor(process, Sup),
    exit(Sup, shutdown),
    receive {'DOWN', Ref, _, _, _} -> ok end.

now_ns() -> erlang:monotonic_time(nanosecond).

%% wait until the registered name points at a new, answering process
await_restart(Name, Old) ->
    case whereis(Name) of
        Pid when is_pid(Pid), Pid =/= Old -> call(Pid, 1), Pid;
        _ -> erlang:yield(), await_restart(Name, Old)
    end.

crash_cycles(Name, N) ->
    lists:map(fun(_) ->
        Old = whereis(Name),
        T0 = now_ns(),
        gen_server:cast(Old, crash),
        await_restart(Name, Old),
        now_ns() - T0
    end, lists:seq(1, N)).

median(Xs) -> lists:nth(length(Xs) div 2 + 1, lists:sort(Xs)).

out(Name, Value, Unit) -> io:format("~s ~.3f ~s~n", [Name, float(Value), Unit]).

%% ---- scenarios
restart_rare(Rounds) ->
    %% a fresh supervisor every 100 crashes: its restart history stays short (crashes are rare)
    Times = lists:append([begin
        Sup = start_sup(1000000, 3600, [child(w, bench_w)]),
        Ts = crash_cycles(bench_w, 100),
        stop_sup(Sup),
        Ts
    end || _ <- lists:seq(1, Rounds)]),
    out("restart_rare_median", median(Times) / 1000, "us").

restart_storm(N) ->
    %% N crashes within one intensity window: OTP keeps every restart time in a list it scans
    Sup = start_sup(100000000, 3600, [child(w, bench_w)]),
    T0 = now_ns(),
    Times = crash_cycles(bench_w, N),
    Total = now_ns() - T0,
    stop_sup(Sup),
    out("restart_storm_mean", Total / N / 1000, "us"),
    out("restart_storm_last1000_mean", lists:sum(lists:nthtail(N - 1000, Times)) / 1000 / 1000, "us").

crash_all(N) ->
    Names = [list_to_atom("bench_" ++ integer_to_list(I)) || I <- lists:seq(1, N)],
    Sup = start_sup(100000000, 3600, [child(I, Nm) || {I, Nm} <- lists:zip(lists:seq(1, N), Names)]),
    Olds = [whereis(Nm) || Nm <- Names],
    T0 = now_ns(),
    [gen_server:cast(P, crash) || P <- Olds],
    [await_restart(Nm, Old) || {Nm, Old} <- lists:zip(Names, Olds)],
    Dt = now_ns() - T0,
    stop_sup(Sup),
    out("crash_1000_at_once", Dt / 1000000, "ms").

call_rtt(N) ->
    Sup = start_sup(10, 5, [child(e, bench_e)]),
    Pid = whereis(bench_e),
    [call(Pid, I) || I <- lists:seq(1, 1000)],
    T0 = now_ns(),
    [call(Pid, I) || I <- lists:seq(1, N)],
    Dt = now_ns() - T0,
    stop_sup(Sup),
    out("call_rtt", Dt / N / 1000, "us").

cast_rate(N) ->
    Sup = start_sup(10, 5, [child(s, bench_s)]),
    Pid = whereis(bench_s),
    T0 = now_ns(),
    [gen_server:cast(Pid, I) || I <- lists:seq(1, N - 1)],
    gen_server:cast(Pid, {count, self(), N}),
    receive {counted, _} -> ok end,
    Dt = now_ns() - T0,
    stop_sup(Sup),
    out("cast_rate", N / (Dt / 1.0e9), "msg/s").

many(N) ->
    erlang:garbage_collect(),
    Before = erlang:memory(total),
    T0 = now_ns(),
    Sup = start_sup(10, 5, [child(I, undefined) || I <- lists:seq(1, N)]),
    Start = now_ns() - T0,
    After = erlang:memory(total),
    T1 = now_ns(),
    stop_sup(Sup),
    Stop = now_ns() - T1,
    out("start_10000", Start / 1000000, "ms"),
    out("stop_10000", Stop / 1000000, "ms"),
    out("memory_per_child", (After - Before) / N, "bytes").

main(Args) ->
    process_flag(trap_exit, true),
    logger:set_primary_config(level, none),  % no crash reports: the Python side logs nothing either
    Quick = lists:member(quick, Args),
    Scale = fun(Full, Small) -> case Quick of true -> Small; false -> Full end end,
    restart_rare(Scale(20, 3)),
    restart_storm(Scale(10000, 2000)),
    crash_all(1000),
    call_rtt(Scale(100000, 10000)),
    cast_rate(Scale(1000000, 100000)),
    many(10000),
    halt(0).
