%% The Erlang/OTP side of the differential test (tests/otp/test_differential.py).
%%
%% Reads scenarios (Erlang terms written by tests/otp/scenarios.py), runs each on OTP's own supervisor with the
%% scriptable worker otp_diff_worker, and prints a trace: after every step the operation's result, the start/stop
%% events in order, and a snapshot of every live supervisor's children. The Python side prints the same trace from
%% mcp-supervisor's core; the test compares them line by line.
-module(otp_diff).
-behaviour(supervisor).
-export([main/1, init/1]).

main(File) ->
    logger:set_primary_config(level, none),
    {ok, Scenarios} = file:consult(File),
    ets:new(dt_log, [named_table, public, ordered_set]),
    ets:new(dt_fail, [named_table, public, set]),
    ets:new(dt_pids, [named_table, public, set]),
    process_flag(trap_exit, true),
    lists:foreach(fun run/1, Scenarios),
    io:format("END~n").

%% -- the supervisor callback: a node of the scenario's tree -------------------------------------------------------
init({Path, Flags, Children}) ->
    {ok, {Flags, [spec(Path, Flags, C) || C <- Children]}}.

spec(Path, Flags, {worker, Id, Restart, Significant}) ->
    Start = case maps:get(strategy, Flags) of
                simple_one_for_one -> {otp_diff_worker, start_link, [Path]};
                _ -> {otp_diff_worker, start_link, [join(Path, Id)]}
            end,
    #{id => Id, start => Start, restart => Restart, significant => Significant, shutdown => 5000, type => worker};
spec(Path, _Flags, {sup, Id, Restart, Significant, SubFlags, Children}) ->
    #{id => Id, start => {supervisor, start_link, [?MODULE, {join(Path, Id), SubFlags, Children}]},
      restart => Restart, significant => Significant, shutdown => infinity, type => supervisor}.

join(<<>>, Id) -> Id;
join(Path, Id) -> <<Path/binary, "/", Id/binary>>.

%% -- one scenario -------------------------------------------------------------------------------------------------
run({scenario, N, {sup, _Id, _R, _S, Flags, Children}, FailInitially, Actions}) ->
    ets:delete_all_objects(dt_log),
    ets:delete_all_objects(dt_fail),
    ets:delete_all_objects(dt_pids),
    [ets:insert(dt_fail, {P, K}) || {P, K} <- FailInitially],
    io:format("S ~p~n", [N]),
    case supervisor:start_link(?MODULE, {<<>>, Flags, Children}) of
        {ok, Root} ->
            step(Root, <<"started">>),
            lists:foreach(fun(A) -> step(Root, act(Root, A)) end, Actions),
            stop_root(Root);
        {error, _} ->
            flush_exits(),
            step(undefined, <<"failed_to_start">>)
    end.

stop_root(Root) ->
    case is_process_alive(Root) of
        true -> exit(Root, shutdown);
        false -> ok
    end,
    receive {'EXIT', Root, _} -> ok after 10000 -> error(root_did_not_stop) end,
    flush_exits(),
    print_events().

flush_exits() ->
    receive {'EXIT', _, _} -> flush_exits() after 0 -> ok end.

step(Root, Result) ->
    settle(Root),
    io:format("R ~s~n", [Result]),
    print_events(),
    print_snapshot(Root).

print_events() ->
    [begin io:format("E ~s ~s~n", [Kind, Path]), ets:delete(dt_log, K) end
     || {K, Kind, Path} <- ets:tab2list(dt_log)],
    ok.

%% -- actions ------------------------------------------------------------------------------------------------------
act(_Root, {fail_starts, Path, N}) ->
    ets:insert(dt_fail, {Path, N}),
    <<"ok">>;
act(_Root, {crash, Path, Reason}) ->
    case ets:lookup(dt_pids, Path) of
        [{_, Pid}] ->
            Ref = monitor(process, Pid),
            catch gen_server:call(Pid, {exit, exit_reason(Reason)}),
            receive {'DOWN', Ref, process, Pid, _} -> ok after 10000 -> error(worker_did_not_exit) end,
            <<"ok">>;
        [] -> <<"noproc">>
    end;
act(Root, {terminate_child, Sup, Id}) -> call(Root, Sup, fun(P) -> supervisor:terminate_child(P, Id) end);
act(Root, {restart_child, Sup, Id}) -> call(Root, Sup, fun(P) -> supervisor:restart_child(P, Id) end);
act(Root, {delete_child, Sup, Id}) -> call(Root, Sup, fun(P) -> supervisor:delete_child(P, Id) end);
act(Root, {start_child, Sup, Child}) ->
    call(Root, Sup, fun(P) -> supervisor:start_child(P, spec(Sup, #{strategy => one_for_one}, Child)) end);
act(Root, {start_dynamic, Sup, Name}) -> call(Root, Sup, fun(P) -> supervisor:start_child(P, [Name]) end);
act(Root, {terminate_dynamic, Sup, Name}) ->
    call(Root, Sup, fun(P) ->
        case ets:lookup(dt_pids, join(Sup, Name)) of
            [{_, Pid}] -> supervisor:terminate_child(P, Pid);
            [] -> {error, not_found}
        end
    end);
act(Root, {count_children, Sup}) ->
    call(Root, Sup, fun(P) ->
        C = supervisor:count_children(P),
        list_to_binary(io_lib:format("specs=~p,active=~p,supervisors=~p,workers=~p",
            [proplists:get_value(K, C) || K <- [specs, active, supervisors, workers]]))
    end).

exit_reason(normal) -> normal;
exit_reason(shutdown) -> shutdown;
exit_reason(abnormal) -> boom.

call(Root, Sup, F) ->
    case sup_pid(Root, Sup) of
        undefined -> <<"noproc">>;
        Pid ->
            try F(Pid) of
                Bin when is_binary(Bin) -> Bin;
                ok -> <<"ok">>;
                {ok, _} -> <<"ok">>;
                {ok, _, _} -> <<"ok">>;
                {error, {already_started, _}} -> <<"error:already_started">>;
                {error, already_present} -> <<"error:already_present">>;
                {error, not_found} -> <<"error:not_found">>;
                {error, running} -> <<"error:running">>;
                {error, restarting} -> <<"error:restarting">>;
                {error, simple_one_for_one} -> <<"error:simple_one_for_one">>;
                {error, _} -> <<"error:failed">>
            catch exit:_ -> <<"noproc">>
            end
    end.

%% The pid of the live supervisor at Path ("" is the root), found by walking which_children.
sup_pid(undefined, _) -> undefined;
sup_pid(Root, <<>>) ->
    case is_process_alive(Root) of true -> Root; false -> undefined end;
sup_pid(Root, Path) ->
    walk(Root, binary:split(Path, <<"/">>, [global])).

walk(Pid, []) -> Pid;
walk(Pid, [Id | Rest]) ->
    case catch supervisor:which_children(Pid) of
        Children when is_list(Children) ->
            case lists:keyfind(Id, 1, Children) of
                {Id, Child, supervisor, _} when is_pid(Child) -> walk(Child, Rest);
                _ -> undefined
            end;
        _ -> undefined
    end.

%% -- settling and snapshots ---------------------------------------------------------------------------------------
%% Quiet = three identical snapshots in a row with nothing restarting (a failed restart is retried by a message the
%% supervisor sends itself; an exiting supervisor's parent learns of it by a signal).
settle(Root) -> settle(Root, none, 0, 2000).

settle(_Root, _Last, _Same, 0) -> error(did_not_settle);
settle(Root, Last, Same, Tries) ->
    Snap = snapshot(Root),
    Busy = lists:any(fun({_, Entries}) ->
                         lists:any(fun({_, restarting}) -> true;
                                      ({<<"#restarting">>, N}) -> N > 0;
                                      (_) -> false
                                   end, Entries)
                     end, Snap),
    if
        Snap =:= Last, not Busy, Same >= 2 -> ok;
        Snap =:= Last -> timer:sleep(1), settle(Root, Snap, Same + 1, Tries - 1);
        true -> timer:sleep(1), settle(Root, Snap, 0, Tries - 1)
    end.

snapshot(undefined) -> [];
snapshot(Root) ->
    case is_process_alive(Root) of
        true -> snap(Root, <<>>);
        false -> []
    end.

snap(Pid, Path) ->
    case catch supervisor:which_children(Pid) of
        Children when is_list(Children) ->
            Dynamic = [C || C = {undefined, _, _, _} <- Children],
            Entries = case Dynamic of  % which_children lists static children in reverse start order
                [] -> lists:reverse([{Id, state(Child)} || {Id, Child, _, _} <- Children]);
                _ -> dynamic_entries(Path, Children)
            end,
            Subs = [snap(Child, join(Path, Id)) || {Id, Child, supervisor, _} <- lists:reverse(Children), is_pid(Child)],
            [{Path, Entries} | lists:append(Subs)];
        _ -> []
    end.

%% simple_one_for_one children have no ids: name them by the path each worker registered
dynamic_entries(Path, Children) ->
    Names = lists:sort([name_of(Path, Child) || {_, Child, _, _} <- Children, is_pid(Child)]),
    Restarting = length([x || {_, restarting, _, _} <- Children]),
    [{N, running} || N <- Names] ++ [{<<"#restarting">>, Restarting}].

name_of(Path, Pid) ->
    case [P || {P, Q} <- ets:tab2list(dt_pids), Q =:= Pid] of
        [P | _] -> binary:part(P, byte_size(Path) + 1, byte_size(P) - byte_size(Path) - 1);
        [] -> <<"?">>
    end.

state(Pid) when is_pid(Pid) -> running;
state(restarting) -> restarting;
state(undefined) -> undefined.

print_snapshot(Root) ->
    case snapshot(Root) of
        [] -> io:format("D~n");
        Snap -> [io:format("T ~s [~s]~n", [show_path(P), show_entries(E)]) || {P, E} <- Snap]
    end,
    ok.

show_path(<<>>) -> <<"/">>;
show_path(P) -> P.

show_entries(Entries) ->
    lists:join(",", [[Id, "=", io_lib:format("~p", [S])] || {Id, S} <- Entries]).
